// Block-device ioctls, and mknod for block device nodes. The caller opens the
// device (O_WRONLY for discard and zero-out) and bounds each range so one call
// never holds a pool thread long.
#include <errno.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "args.h"
#include "async.h"
#include "exports.h"

namespace volagent {
namespace {

Napi::Value BlkGetSize64(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  std::string path = ArgLabel(info, 1);
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<uint64_t>::Start(
      env, "volagent.blkgetsize64",
      [=](uint64_t& bytes, SysError& err) {
        if (ioctl(fd, BLKGETSIZE64, &bytes) == 0) return true;
        return err.set(errno, "blkgetsize64", path);
      },
      [](Napi::Env e, uint64_t& bytes) { return Napi::Number::New(e, static_cast<double>(bytes)); });
}

Napi::Value BlkSszGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  std::string path = ArgLabel(info, 1);
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<int>::Start(
      env, "volagent.blksszget",
      [=](int& size, SysError& err) {
        if (ioctl(fd, BLKSSZGET, &size) == 0) return true;
        return err.set(errno, "blksszget", path);
      },
      [](Napi::Env e, int& size) { return Napi::Number::New(e, size); });
}

// BLKDISCARD and BLKZEROOUT take {offset, length} in bytes, both multiples of
// the logical sector size. BLKZEROOUT guarantees zeroes on read afterwards
// (unmapping where the device can); BLKDISCARD does not.
Napi::Value RangeIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* syscall) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgInteger(info, 1, "offset");
  int64_t length = ArgInteger(info, 2, "length");
  std::string path = ArgLabel(info, 3);
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<NoResult>::Start(
      env, syscall,
      [=](NoResult&, SysError& err) {
        uint64_t range[2] = {static_cast<uint64_t>(offset), static_cast<uint64_t>(length)};
        if (ioctl(fd, request, range) == 0) return true;
        return err.set(errno, syscall, path);
      },
      Undefined);
}

Napi::Value BlkDiscard(const Napi::CallbackInfo& info) { return RangeIoctl(info, BLKDISCARD, "blkdiscard"); }
Napi::Value BlkZeroOut(const Napi::CallbackInfo& info) { return RangeIoctl(info, BLKZEROOUT, "blkzeroout"); }

// mknod(path, S_IFBLK | mode, major:minor): a block device node, as udev
// would make one (device-mapper volumes where no udev runs). EEXIST when the
// path exists, whatever it is.
Napi::Value MknodBlock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  int64_t devMajor = ArgInteger(info, 1, "major");
  int64_t devMinor = ArgInteger(info, 2, "minor");
  int64_t mode = ArgInteger(info, 3, "mode");
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<NoResult>::Start(
      env, "volagent.mknod",
      [=](NoResult&, SysError& err) {
        dev_t dev = makedev(static_cast<unsigned>(devMajor), static_cast<unsigned>(devMinor));
        if (mknod(path.c_str(), S_IFBLK | (static_cast<mode_t>(mode) & 07777), dev) == 0) return true;
        return err.set(errno, "mknod", path);
      },
      Undefined);
}

// pread into memory aligned for O_DIRECT (the caller opens the fd with
// O_DIRECT; offset and length must be multiples of the device's logical block
// size). Returns the bytes read: fewer than asked only at the end of the device.
constexpr int64_t kAlignedReadMax = 1 << 20;
constexpr size_t kDirectAlignment = 4096;

Napi::Value PreadAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgInteger(info, 1, "offset");
  int64_t length = ArgInteger(info, 2, "length", 1);
  std::string path = ArgLabel(info, 3);
  if (env.IsExceptionPending()) return env.Undefined();
  if (length > kAlignedReadMax) {
    MakeTypeError(env, "The \"length\" argument is out of range").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return PromiseWorker<std::vector<char>>::Start(
      env, "volagent.preadaligned",
      [=](std::vector<char>& bytes, SysError& err) {
        void* raw = nullptr;
        int rc = posix_memalign(&raw, kDirectAlignment, static_cast<size_t>(length));
        if (rc != 0) return err.set(rc, "posix_memalign", path);
        std::unique_ptr<char, decltype(&free)> aligned(static_cast<char*>(raw), &free);
        size_t done = 0;
        while (done < static_cast<size_t>(length)) {
          ssize_t n = pread(fd, aligned.get() + done, static_cast<size_t>(length) - done, static_cast<off_t>(offset + done));
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) return err.set(errno, "pread", path);
          if (n == 0) break;
          done += static_cast<size_t>(n);
        }
        bytes.assign(aligned.get(), aligned.get() + done);
        return true;
      },
      [](Napi::Env e, std::vector<char>& bytes) { return Napi::Buffer<char>::Copy(e, bytes.data(), bytes.size()); });
}

// A Buffer over memory aligned for O_DIRECT (4 KiB), freed when the Buffer
// is collected; V8 is told of the memory so collection keeps pace with it.
// Allocation does not block: it runs on the calling thread.
constexpr int64_t kAlignedBufferMax = 64 << 20;

Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t length = ArgInteger(info, 0, "length", 1);
  if (env.IsExceptionPending()) return env.Undefined();
  if (length > kAlignedBufferMax) {
    MakeTypeError(env, "The \"length\" argument is out of range").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* raw = nullptr;
  int rc = posix_memalign(&raw, kDirectAlignment, static_cast<size_t>(length));
  if (rc != 0) {
    SysError err;
    err.set(rc, "posix_memalign");
    MakeNodeError(env, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::MemoryManagement::AdjustExternalMemory(env, length);
  return Napi::Buffer<char>::New(env, static_cast<char*>(raw), static_cast<size_t>(length), [length](Napi::Env finalizeEnv, char* data) {
    free(data);
    Napi::MemoryManagement::AdjustExternalMemory(finalizeEnv, -length);
  });
}

}  // namespace

void InitBlockOps(Napi::Env env, Napi::Object exports) {
  exports.Set("blkGetSize64", Napi::Function::New(env, BlkGetSize64, "blkGetSize64"));
  exports.Set("blkSszGet", Napi::Function::New(env, BlkSszGet, "blkSszGet"));
  exports.Set("blkDiscard", Napi::Function::New(env, BlkDiscard, "blkDiscard"));
  exports.Set("blkZeroOut", Napi::Function::New(env, BlkZeroOut, "blkZeroOut"));
  exports.Set("mknodBlock", Napi::Function::New(env, MknodBlock, "mknodBlock"));
  exports.Set("preadAligned", Napi::Function::New(env, PreadAligned, "preadAligned"));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer, "alignedBuffer"));
}

}  // namespace volagent
