#pragma once
#include <napi.h>

namespace volagent {
void InitFileOps(Napi::Env env, Napi::Object exports);
void InitBlockOps(Napi::Env env, Napi::Object exports);
void InitDeviceMapper(Napi::Env env, Napi::Object exports);
void InitLoopOps(Napi::Env env, Napi::Object exports);
void InitServiceOps(Napi::Env env, Napi::Object exports);
}  // namespace volagent
