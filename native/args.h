// Argument readers for the exported functions. They throw a TypeError (a JS
// exception, on the main thread) and return a sentinel; callers check
// env.IsExceptionPending() once after reading all arguments.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "errors.h"

namespace volagent {

inline int64_t ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min = 0) {
  Napi::Env env = info.Env();
  if (env.IsExceptionPending()) return 0;
  if (i >= info.Length() || !info[i].IsNumber()) {
    MakeTypeError(env, std::string("The \"") + name + "\" argument must be an integer").ThrowAsJavaScriptException();
    return 0;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || std::floor(v) != v || v < static_cast<double>(min) || v > 9007199254740991.0) {
    MakeTypeError(env, std::string("The \"") + name + "\" argument is out of range").ThrowAsJavaScriptException();
    return 0;
  }
  return static_cast<int64_t>(v);
}

inline int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name) {
  int64_t fd = ArgInteger(info, i, name, 0);
  return fd > INT32_MAX ? -1 : static_cast<int>(fd);
}

// Optional string used only to label errors (the path a file descriptor was opened from).
inline std::string ArgLabel(const Napi::CallbackInfo& info, size_t i) {
  if (i < info.Length() && info[i].IsString()) return info[i].As<Napi::String>().Utf8Value();
  return {};
}

inline std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Env env = info.Env();
  if (env.IsExceptionPending()) return {};
  if (i >= info.Length() || !info[i].IsString()) {
    MakeTypeError(env, std::string("The \"") + name + "\" argument must be a string").ThrowAsJavaScriptException();
    return {};
  }
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) {
    MakeTypeError(env, std::string("The \"") + name + "\" argument must not contain NUL").ThrowAsJavaScriptException();
    return {};
  }
  return s;
}

}  // namespace volagent
