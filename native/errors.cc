#include "errors.h"

#include <errno.h>
#include <string.h>
#include <uv.h>

namespace volagent {

bool SysError::set(int errnumber, const char* call, std::string p, std::string d) {
  errnum = errnumber;
  syscall = call;
  path = std::move(p);
  dest = std::move(d);
  return false;
}

static std::string ErrorName(int errnum) {
  // libuv knows the portable names; glibc names the rest (EREMOTEIO, ENOTBLK...).
  const char* uvName = uv_err_name(-errnum);
  if (uvName != nullptr && strncmp(uvName, "Unknown", 7) != 0) return uvName;
  const char* libcName = strerrorname_np(errnum);
  return libcName != nullptr ? libcName : "E" + std::to_string(errnum);
}

static std::string Description(int errnum) {
  // libuv describes errno 95 as "operation not supported on socket" whatever
  // the object; FICLONE and fallocate return it for files.
  if (errnum == EOPNOTSUPP) return "operation not supported";
  const char* uvText = uv_strerror(-errnum);
  if (uvText != nullptr && strncmp(uvText, "Unknown", 7) != 0) return uvText;
  char buf[256];
  return strerror_r(errnum, buf, sizeof buf);
}

Napi::Error MakeNodeError(Napi::Env env, const SysError& e) {
  const std::string code = ErrorName(e.errnum);
  std::string message = code + ": " + Description(e.errnum) + ", " + e.syscall;
  if (!e.path.empty()) message += " '" + e.path + "'";
  if (!e.dest.empty()) message += " -> '" + e.dest + "'";
  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, -e.errnum));
  obj.Set("code", Napi::String::New(env, code));
  obj.Set("syscall", Napi::String::New(env, e.syscall));
  if (!e.path.empty()) obj.Set("path", Napi::String::New(env, e.path));
  if (!e.dest.empty()) obj.Set("dest", Napi::String::New(env, e.dest));
  return error;
}

Napi::Error MakeTypeError(Napi::Env env, const std::string& message) {
  Napi::Error error = Napi::TypeError::New(env, message);
  error.Value().Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  return error;
}

}  // namespace volagent
