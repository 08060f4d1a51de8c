// Module entry: registers each kernel-interface group.
#include <napi.h>

#include "exports.h"

static Napi::Object InitVolagent(Napi::Env env, Napi::Object exports) {
  volagent::InitFileOps(env, exports);
  volagent::InitBlockOps(env, exports);
  volagent::InitDeviceMapper(env, exports);
  volagent::InitLoopOps(env, exports);
  volagent::InitServiceOps(env, exports);
  return exports;
}

NODE_API_MODULE(volagent, InitVolagent)
