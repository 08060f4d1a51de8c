// Node-shaped system errors: the same fields and message layout as the errors
// of Node's own `fs` module (code, errno as a negative libuv code, syscall,
// path, dest), so TypeScript policy can branch on `code` alone.
#pragma once
#include <napi.h>
#include <string>

namespace volagent {

struct SysError {
  int errnum = 0;               // positive errno from the failed call
  const char* syscall = "";     // the kernel operation, e.g. "copy_file_range"
  std::string path;             // the file or device the call was made on
  std::string dest;             // the second file, for two-file operations

  bool failed() const { return errnum != 0; }
  // Records errno of the call that just failed; returns false so workers can
  // `return err.set(...)`.
  bool set(int errnumber, const char* call, std::string p = {}, std::string d = {});
};

Napi::Error MakeNodeError(Napi::Env env, const SysError& e);
Napi::Error MakeTypeError(Napi::Env env, const std::string& message);

}  // namespace volagent
