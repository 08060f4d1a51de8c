// Loop devices (include/uapi/linux/loop.h): a free device number from
// /dev/loop-control, LOOP_CONFIGURE (file, flags and block size in one
// ioctl), LOOP_GET_STATUS64 and LOOP_CLR_FD. One kernel operation per call;
// retrying when another process takes the free device first is the caller's.
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <string>

#include "args.h"
#include "async.h"
#include "exports.h"

namespace volagent {
namespace {

constexpr const char* kLoopControl = "/dev/loop-control";

// Closes a descriptor when it goes out of scope.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// LOOP_CTL_GET_FREE: the number of a free loop device, made if none is free.
Napi::Value LoopGetFree(const Napi::CallbackInfo& info) {
  return PromiseWorker<int>::Start(
      info.Env(), "volagent.loop_get_free",
      [](int& number, SysError& err) {
        Fd control{open(kLoopControl, O_RDWR | O_CLOEXEC)};
        if (control.fd < 0) return err.set(errno, "open", kLoopControl);
        number = ioctl(control.fd, LOOP_CTL_GET_FREE);
        if (number < 0) return err.set(errno, "LOOP_CTL_GET_FREE", kLoopControl);
        return true;
      },
      [](Napi::Env e, int& number) { return Napi::Number::New(e, number); });
}

struct LoopStatus {
  std::string backingFile;
  uint64_t offset = 0, sizeLimit = 0;
  uint32_t number = 0, flags = 0;
  uint32_t major = 0, minor = 0;
};

Napi::Value StatusToJs(Napi::Env e, LoopStatus& s) {
  Napi::Object o = Napi::Object::New(e);
  o.Set("number", Napi::Number::New(e, s.number));
  o.Set("major", Napi::Number::New(e, s.major));
  o.Set("minor", Napi::Number::New(e, s.minor));
  o.Set("backingFile", Napi::String::New(e, s.backingFile));
  o.Set("offset", Napi::Number::New(e, static_cast<double>(s.offset)));
  o.Set("sizeLimit", Napi::Number::New(e, static_cast<double>(s.sizeLimit)));
  o.Set("readOnly", Napi::Boolean::New(e, (s.flags & LO_FLAGS_READ_ONLY) != 0));
  o.Set("autoclear", Napi::Boolean::New(e, (s.flags & LO_FLAGS_AUTOCLEAR) != 0));
  o.Set("directIo", Napi::Boolean::New(e, (s.flags & LO_FLAGS_DIRECT_IO) != 0));
  return o;
}

bool ReadStatus(int fd, const std::string& device, LoopStatus& out, SysError& err) {
  loop_info64 info{};
  if (ioctl(fd, LOOP_GET_STATUS64, &info) != 0) return err.set(errno, "LOOP_GET_STATUS64", device);
  struct stat st{};
  if (fstat(fd, &st) != 0) return err.set(errno, "fstat", device);
  out.backingFile.assign(reinterpret_cast<const char*>(info.lo_file_name), strnlen(reinterpret_cast<const char*>(info.lo_file_name), LO_NAME_SIZE));
  out.offset = info.lo_offset;
  out.sizeLimit = info.lo_sizelimit;
  out.number = info.lo_number;
  out.flags = info.lo_flags;
  out.major = major(st.st_rdev);
  out.minor = minor(st.st_rdev);
  return true;
}

// LOOP_CONFIGURE: `file` behind the loop device `device` with the given
// flags (LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO) and
// logical block size (0: 512). EBUSY when the device is already bound.
Napi::Value LoopConfigure(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string device = ArgString(info, 0, "device");
  std::string file = ArgString(info, 1, "file");
  int64_t flags = ArgInteger(info, 2, "flags");
  int64_t blockSize = ArgInteger(info, 3, "blockSize");
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<LoopStatus>::Start(
      env, "volagent.loop_configure",
      [=](LoopStatus& out, SysError& err) {
        const bool readOnly = (flags & LO_FLAGS_READ_ONLY) != 0;
        const int access = readOnly ? O_RDONLY : O_RDWR;
        Fd backing{open(file.c_str(), access | O_CLOEXEC | ((flags & LO_FLAGS_DIRECT_IO) ? O_DIRECT : 0))};
        if (backing.fd < 0) return err.set(errno, "open", file);
        Fd loop{open(device.c_str(), access | O_CLOEXEC)};
        if (loop.fd < 0) return err.set(errno, "open", device);
        loop_config config{};
        config.fd = static_cast<__u32>(backing.fd);
        config.block_size = static_cast<__u32>(blockSize);
        config.info.lo_flags = static_cast<__u32>(flags);
        strncpy(reinterpret_cast<char*>(config.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
        if (ioctl(loop.fd, LOOP_CONFIGURE, &config) != 0) return err.set(errno, "LOOP_CONFIGURE", device, file);
        return ReadStatus(loop.fd, device, out, err);
      },
      StatusToJs);
}

// LOOP_GET_STATUS64: what the device is bound to; ENXIO when it is free.
Napi::Value LoopStatusOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string device = ArgString(info, 0, "device");
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<LoopStatus>::Start(
      env, "volagent.loop_status",
      [=](LoopStatus& out, SysError& err) {
        Fd loop{open(device.c_str(), O_RDONLY | O_CLOEXEC)};
        if (loop.fd < 0) return err.set(errno, "open", device);
        return ReadStatus(loop.fd, device, out, err);
      },
      StatusToJs);
}

// LOOP_CLR_FD: unbinds the device (deferred by the kernel while it is open,
// as autoclear); ENXIO when it is free.
Napi::Value LoopDetach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string device = ArgString(info, 0, "device");
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<NoResult>::Start(
      env, "volagent.loop_detach",
      [=](NoResult&, SysError& err) {
        Fd loop{open(device.c_str(), O_RDONLY | O_CLOEXEC)};
        if (loop.fd < 0) return err.set(errno, "open", device);
        if (ioctl(loop.fd, LOOP_CLR_FD, 0) != 0) return err.set(errno, "LOOP_CLR_FD", device);
        return true;
      },
      Undefined);
}

}  // namespace

void InitLoopOps(Napi::Env env, Napi::Object exports) {
  exports.Set("loopGetFree", Napi::Function::New(env, LoopGetFree, "loopGetFree"));
  exports.Set("loopConfigure", Napi::Function::New(env, LoopConfigure, "loopConfigure"));
  exports.Set("loopStatus", Napi::Function::New(env, LoopStatusOf, "loopStatus"));
  exports.Set("loopDetach", Napi::Function::New(env, LoopDetach, "loopDetach"));
  Napi::Object flags = Napi::Object::New(env);
  flags.Set("READ_ONLY", Napi::Number::New(env, LO_FLAGS_READ_ONLY));
  flags.Set("AUTOCLEAR", Napi::Number::New(env, LO_FLAGS_AUTOCLEAR));
  flags.Set("DIRECT_IO", Napi::Number::New(env, LO_FLAGS_DIRECT_IO));
  exports.Set("loopFlags", flags);
}

}  // namespace volagent
