// File operations: reflink (FICLONE, FICLONERANGE), bounded copy steps
// (copy_file_range, pread/pwrite), extent listing (SEEK_DATA/SEEK_HOLE, FIEMAP),
// fallocate, fsync/fdatasync, statfs and rename without replace. Each export is one kernel operation
// (or one bounded loop of it) on the libuv pool; callers own the descriptors.
// One export is a fixed sequence instead (reflinkNewFile: a new file sharing
// every block of another, in one pool job rather than eight), and owns the
// descriptors it opens.
#include "exports.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <memory>
#include <vector>

#include "args.h"
#include "async.h"

namespace volagent {
namespace {

Napi::Value Ficlone(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dst = ArgFd(info, 0, "dstFd");
  int src = ArgFd(info, 1, "srcFd");
  std::string srcPath = ArgLabel(info, 2), dstPath = ArgLabel(info, 3);
  if (env.IsExceptionPending()) return env.Undefined();
  // FICLONE shares all of src's blocks with dst (truncated to src's size).
  // Both must be regular files on one filesystem supporting reflink.
  return PromiseWorker<NoResult>::Start(
      env, "volagent.ficlone",
      [=](NoResult&, SysError& err) {
        if (ioctl(dst, FICLONE, src) == 0) return true;
        return err.set(errno, "ficlone", srcPath, dstPath);
      },
      Undefined);
}

Napi::Value ReflinkNewFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string srcPath = ArgString(info, 0, "srcPath");
  std::string dstPath = ArgString(info, 1, "dstPath");
  int64_t mode = ArgInteger(info, 2, "mode");
  int64_t growTo = ArgInteger(info, 3, "growTo");
  const bool sync = info.Length() > 4 && info[4].ToBoolean().Value();
  if (!env.IsExceptionPending() && mode > 07777) {
    MakeTypeError(env, "The \"mode\" argument is out of range").ThrowAsJavaScriptException();
  }
  if (env.IsExceptionPending()) return env.Undefined();
  // open(src), open(dst, O_CREAT|O_EXCL, mode), fchmod(dst, mode) (exact
  // bits: the umask does not apply), ioctl(dst, FICLONE, src), then, when
  // growTo > 0, ftruncate(dst, growTo) (EINVAL if src is larger), and fsync
  // when asked. A failure after dst was created unlinks it: the caller finds
  // dst as it was (absent) and the errno of the step that failed.
  return PromiseWorker<int64_t>::Start(
      env, "volagent.reflink_new_file",
      [=](int64_t& size, SysError& err) {
        int src = open(srcPath.c_str(), O_RDONLY | O_CLOEXEC);
        if (src < 0) return err.set(errno, "open", srcPath);
        int dst = open(dstPath.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode));
        if (dst < 0) {
          err.set(errno, "open", dstPath);
          close(src);
          return false;
        }
        struct stat st {};
        bool ok = (fchmod(dst, static_cast<mode_t>(mode)) == 0 || err.set(errno, "fchmod", dstPath)) &&
                  (ioctl(dst, FICLONE, src) == 0 || err.set(errno, "ficlone", srcPath, dstPath)) &&
                  (fstat(dst, &st) == 0 || err.set(errno, "fstat", dstPath));
        if (ok && growTo > 0) {
          if (st.st_size > growTo) {
            ok = err.set(EINVAL, "ftruncate", dstPath);
          } else if (st.st_size < growTo) {
            ok = ftruncate(dst, static_cast<off_t>(growTo)) == 0 || err.set(errno, "ftruncate", dstPath);
            st.st_size = growTo;
          }
        }
        if (ok && sync) ok = fsync(dst) == 0 || err.set(errno, "fsync", dstPath);
        close(src);
        if (close(dst) != 0 && ok) ok = err.set(errno, "close", dstPath);
        if (!ok) unlink(dstPath.c_str());
        size = st.st_size;
        return ok;
      },
      [](Napi::Env e, int64_t& size) { return Napi::Number::New(e, static_cast<double>(size)); });
}

Napi::Value FicloneRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dst = ArgFd(info, 0, "dstFd");
  int src = ArgFd(info, 1, "srcFd");
  int64_t srcOffset = ArgInteger(info, 2, "srcOffset");
  int64_t length = ArgInteger(info, 3, "length");
  int64_t dstOffset = ArgInteger(info, 4, "dstOffset");
  std::string srcPath = ArgLabel(info, 5), dstPath = ArgLabel(info, 6);
  if (env.IsExceptionPending()) return env.Undefined();
  // Offsets and length must be multiples of the filesystem block size, except
  // a length reaching src's EOF; length 0 means "to the end of src".
  return PromiseWorker<NoResult>::Start(
      env, "volagent.ficlonerange",
      [=](NoResult&, SysError& err) {
        file_clone_range range{};
        range.src_fd = src;
        range.src_offset = static_cast<__u64>(srcOffset);
        range.src_length = static_cast<__u64>(length);
        range.dest_offset = static_cast<__u64>(dstOffset);
        if (ioctl(dst, FICLONERANGE, &range) == 0) return true;
        return err.set(errno, "ficlonerange", srcPath, dstPath);
      },
      Undefined);
}

Napi::Value CopyFileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src = ArgFd(info, 0, "srcFd");
  int64_t srcOffset = ArgInteger(info, 1, "srcOffset");
  int dst = ArgFd(info, 2, "dstFd");
  int64_t dstOffset = ArgInteger(info, 3, "dstOffset");
  int64_t length = ArgInteger(info, 4, "length");
  std::string srcPath = ArgLabel(info, 5), dstPath = ArgLabel(info, 6);
  if (env.IsExceptionPending()) return env.Undefined();
  // copy_file_range may copy less than asked; loop until `length` or src EOF
  // (a return of 0). The kernel may share extents instead of copying them.
  return PromiseWorker<int64_t>::Start(
      env, "volagent.copy_file_range",
      [=](int64_t& copied, SysError& err) {
        loff_t in = srcOffset, out = dstOffset;
        copied = 0;
        while (copied < length) {
          ssize_t n = copy_file_range(src, &in, dst, &out, static_cast<size_t>(length - copied), 0);
          if (n < 0) {
            if (errno == EINTR) continue;
            return err.set(errno, "copy_file_range", srcPath, dstPath);
          }
          if (n == 0) break;
          copied += n;
        }
        return true;
      },
      [](Napi::Env e, int64_t& copied) { return Napi::Number::New(e, static_cast<double>(copied)); });
}

struct ReadWriteResult {
  int64_t bytesRead = 0;
  int64_t bytesWritten = 0;
};

bool AllZero(const char* p, size_t n) { return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0); }

// Writes buf[0, n) at fileOffset. When zeroBlock > 0, blocks of that size
// (counted from the start of buf) that are all zero are skipped, so they stay
// holes in a fresh sparse file; the caller decides whether that is correct.
bool WriteSkippingZeros(int fd, const char* buf, size_t n, int64_t fileOffset, int64_t zeroBlock, const std::string& path,
                        int64_t& written, SysError& err) {
  const size_t block = zeroBlock > 0 ? static_cast<size_t>(zeroBlock) : n;
  size_t pos = 0;
  while (pos < n) {
    size_t first = std::min(block, n - pos);
    if (zeroBlock > 0 && AllZero(buf + pos, first)) {
      pos += first;
      continue;
    }
    size_t runEnd = pos + first;  // extend over the following non-zero blocks
    while (runEnd < n) {
      size_t next = std::min(block, n - runEnd);
      if (zeroBlock > 0 && AllZero(buf + runEnd, next)) break;
      runEnd += next;
    }
    while (pos < runEnd) {
      ssize_t put = pwrite(fd, buf + pos, runEnd - pos, fileOffset + static_cast<int64_t>(pos));
      if (put < 0) {
        if (errno == EINTR) continue;
        return err.set(errno, "write", path);
      }
      pos += static_cast<size_t>(put);
      written += put;
    }
  }
  return true;
}

Napi::Value CopyByReadWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src = ArgFd(info, 0, "srcFd");
  int64_t srcOffset = ArgInteger(info, 1, "srcOffset");
  int dst = ArgFd(info, 2, "dstFd");
  int64_t dstOffset = ArgInteger(info, 3, "dstOffset");
  int64_t length = ArgInteger(info, 4, "length");
  int64_t zeroBlock = ArgInteger(info, 5, "skipZeroBlockSize");
  std::string srcPath = ArgLabel(info, 6), dstPath = ArgLabel(info, 7);
  if (env.IsExceptionPending()) return env.Undefined();
  // pread/pwrite through one buffer; see WriteSkippingZeros for skipZeroBlockSize.
  return PromiseWorker<ReadWriteResult>::Start(
      env, "volagent.copy_read_write",
      [=](ReadWriteResult& r, SysError& err) {
        constexpr size_t kBuffer = 1 << 20;
        void* raw = nullptr;
        if (posix_memalign(&raw, 4096, kBuffer) != 0) return err.set(ENOMEM, "read", srcPath);
        std::unique_ptr<char, decltype(&free)> buf(static_cast<char*>(raw), free);
        while (r.bytesRead < length) {
          size_t want = static_cast<size_t>(std::min<int64_t>(kBuffer, length - r.bytesRead));
          ssize_t got = pread(src, buf.get(), want, srcOffset + r.bytesRead);
          if (got < 0) {
            if (errno == EINTR) continue;
            return err.set(errno, "read", srcPath);
          }
          if (got == 0) break;
          if (!WriteSkippingZeros(dst, buf.get(), static_cast<size_t>(got), dstOffset + r.bytesRead, zeroBlock, dstPath,
                                  r.bytesWritten, err)) {
            return false;
          }
          r.bytesRead += got;
        }
        return true;
      },
      [](Napi::Env e, ReadWriteResult& r) {
        Napi::Object o = Napi::Object::New(e);
        o.Set("bytesRead", Napi::Number::New(e, static_cast<double>(r.bytesRead)));
        o.Set("bytesWritten", Napi::Number::New(e, static_cast<double>(r.bytesWritten)));
        return o;
      });
}

struct WriteResult {
  int64_t bytesWritten = 0;
};

Napi::Value WriteData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  if (!env.IsExceptionPending() && (info.Length() < 2 || !info[1].IsBuffer())) {
    MakeTypeError(env, "The \"data\" argument must be a Buffer").ThrowAsJavaScriptException();
  }
  int64_t fileOffset = ArgInteger(info, 2, "fileOffset");
  int64_t zeroBlock = ArgInteger(info, 3, "skipZeroBlockSize");
  const bool startWriteback = info.Length() > 4 && info[4].ToBoolean().Value();
  std::string path = ArgLabel(info, 5);
  if (env.IsExceptionPending()) return env.Undefined();
  Napi::Buffer<char> data = info[1].As<Napi::Buffer<char>>();
  // The reference keeps the Buffer's memory alive while the pool thread writes
  // it; it is dropped with the worker, on the main thread. The caller must not
  // change the Buffer until the promise settles.
  auto keep = std::make_shared<Napi::ObjectReference>(Napi::Persistent(data.As<Napi::Object>()));
  const char* bytes = data.Data();
  const size_t length = data.Length();
  return PromiseWorker<WriteResult>::Start(
      env, "volagent.write_data",
      [=](WriteResult& r, SysError& err) {
        (void)keep;
        if (!WriteSkippingZeros(fd, bytes, length, fileOffset, zeroBlock, path, r.bytesWritten, err)) return false;
        // SYNC_FILE_RANGE_WRITE starts writeback of the range's dirty pages and
        // returns without waiting, so a later fsync has less left to flush. It
        // makes nothing durable by itself (no metadata, no disk cache flush).
        if (startWriteback && length > 0 && sync_file_range(fd, fileOffset, static_cast<off_t>(length), SYNC_FILE_RANGE_WRITE) != 0) {
          return err.set(errno, "sync_file_range", path);
        }
        return true;
      },
      [](Napi::Env e, WriteResult& r) { return Napi::Number::New(e, static_cast<double>(r.bytesWritten)); });
}

struct ExtentList {
  std::vector<int64_t> flat;  // offset, length, offset, length, ...
  int64_t next = 0;
};

Napi::Value DataExtents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int64_t start = ArgInteger(info, 1, "start");
  int64_t end = ArgInteger(info, 2, "end");
  int64_t maxExtents = ArgInteger(info, 3, "maxExtents", 1);
  std::string path = ArgLabel(info, 4);
  if (env.IsExceptionPending()) return env.Undefined();
  // SEEK_DATA from a position in a hole past the last data fails with ENXIO;
  // filesystems without hole tracking report the whole file as one extent.
  // Block devices reject SEEK_DATA with EINVAL.
  return PromiseWorker<ExtentList>::Start(
      env, "volagent.data_extents",
      [=](ExtentList& list, SysError& err) {
        int64_t pos = start;
        while (pos < end && static_cast<int64_t>(list.flat.size() / 2) < maxExtents) {
          off_t data = lseek(fd, pos, SEEK_DATA);
          if (data < 0) {
            if (errno == ENXIO) { pos = end; break; }
            return err.set(errno, "lseek", path);
          }
          if (data >= end) { pos = end; break; }
          off_t hole = lseek(fd, data, SEEK_HOLE);
          if (hole < 0) return err.set(errno, "lseek", path);
          int64_t stop = std::min<int64_t>(hole, end);
          list.flat.push_back(data);
          list.flat.push_back(stop - data);
          pos = stop;
        }
        list.next = pos;
        return true;
      },
      [](Napi::Env e, ExtentList& list) {
        Napi::Object o = Napi::Object::New(e);
        Napi::Array extents = Napi::Array::New(e, list.flat.size() / 2);
        for (size_t i = 0; i < list.flat.size() / 2; i++) {
          Napi::Array pair = Napi::Array::New(e, 2);
          pair.Set(uint32_t{0}, Napi::Number::New(e, static_cast<double>(list.flat[2 * i])));
          pair.Set(uint32_t{1}, Napi::Number::New(e, static_cast<double>(list.flat[2 * i + 1])));
          extents.Set(static_cast<uint32_t>(i), pair);
        }
        o.Set("extents", extents);
        o.Set("next", Napi::Number::New(e, static_cast<double>(list.next)));
        return o;
      });
}

struct FiemapResult {
  std::vector<fiemap_extent> extents;
};

Napi::Value Fiemap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int64_t start = ArgInteger(info, 1, "start");
  int64_t length = ArgInteger(info, 2, "length");
  int64_t maxExtents = ArgInteger(info, 3, "maxExtents", 1);
  bool sync = info.Length() > 4 && info[4].ToBoolean().Value();
  std::string path = ArgLabel(info, 5);
  if (env.IsExceptionPending()) return env.Undefined();
  if (maxExtents > 65536) maxExtents = 65536;
  // FS_IOC_FIEMAP fills at most fm_extent_count extents from fm_start; the
  // caller continues after the last one until FIEMAP_EXTENT_LAST.
  return PromiseWorker<FiemapResult>::Start(
      env, "volagent.fiemap",
      [=](FiemapResult& r, SysError& err) {
        size_t bytes = sizeof(fiemap) + static_cast<size_t>(maxExtents) * sizeof(fiemap_extent);
        std::vector<char> buf(bytes, 0);
        auto* map = reinterpret_cast<fiemap*>(buf.data());
        map->fm_start = static_cast<__u64>(start);
        map->fm_length = static_cast<__u64>(length);
        map->fm_flags = sync ? FIEMAP_FLAG_SYNC : 0;
        map->fm_extent_count = static_cast<__u32>(maxExtents);
        if (ioctl(fd, FS_IOC_FIEMAP, map) != 0) return err.set(errno, "fiemap", path);
        r.extents.assign(map->fm_extents, map->fm_extents + map->fm_mapped_extents);
        return true;
      },
      [](Napi::Env e, FiemapResult& r) {
        Napi::Array out = Napi::Array::New(e, r.extents.size());
        for (size_t i = 0; i < r.extents.size(); i++) {
          const fiemap_extent& x = r.extents[i];
          Napi::Object o = Napi::Object::New(e);
          o.Set("logical", Napi::Number::New(e, static_cast<double>(x.fe_logical)));
          o.Set("physical", Napi::Number::New(e, static_cast<double>(x.fe_physical)));
          o.Set("length", Napi::Number::New(e, static_cast<double>(x.fe_length)));
          o.Set("flags", Napi::Number::New(e, x.fe_flags));
          out.Set(static_cast<uint32_t>(i), o);
        }
        return out;
      });
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int64_t mode = ArgInteger(info, 1, "mode");
  int64_t offset = ArgInteger(info, 2, "offset");
  int64_t length = ArgInteger(info, 3, "length", 1);
  std::string path = ArgLabel(info, 4);
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<NoResult>::Start(
      env, "volagent.fallocate",
      [=](NoResult&, SysError& err) {
        if (fallocate(fd, static_cast<int>(mode), offset, length) == 0) return true;
        return err.set(errno, "fallocate", path);
      },
      Undefined);
}

Napi::Value Sync(const Napi::CallbackInfo& info, bool dataOnly) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  std::string path = ArgLabel(info, 1);
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<NoResult>::Start(
      env, dataOnly ? "volagent.fdatasync" : "volagent.fsync",
      [=](NoResult&, SysError& err) {
        if ((dataOnly ? fdatasync(fd) : fsync(fd)) == 0) return true;
        return err.set(errno, dataOnly ? "fdatasync" : "fsync", path);
      },
      Undefined);
}

Napi::Value Fsync(const Napi::CallbackInfo& info) { return Sync(info, false); }
Napi::Value Fdatasync(const Napi::CallbackInfo& info) { return Sync(info, true); }

Napi::Value Statfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<struct statfs>::Start(
      env, "volagent.statfs",
      [=](struct statfs& st, SysError& err) {
        if (statfs(path.c_str(), &st) == 0) return true;
        return err.set(errno, "statfs", path);
      },
      [](Napi::Env e, struct statfs& st) {
        Napi::Object o = Napi::Object::New(e);
        o.Set("type", Napi::Number::New(e, static_cast<double>(static_cast<uint32_t>(st.f_type))));
        o.Set("bsize", Napi::Number::New(e, static_cast<double>(st.f_bsize)));
        o.Set("frsize", Napi::Number::New(e, static_cast<double>(st.f_frsize)));
        o.Set("blocks", Napi::Number::New(e, static_cast<double>(st.f_blocks)));
        o.Set("bfree", Napi::Number::New(e, static_cast<double>(st.f_bfree)));
        o.Set("bavail", Napi::Number::New(e, static_cast<double>(st.f_bavail)));
        o.Set("files", Napi::Number::New(e, static_cast<double>(st.f_files)));
        o.Set("ffree", Napi::Number::New(e, static_cast<double>(st.f_ffree)));
        o.Set("namelen", Napi::Number::New(e, static_cast<double>(st.f_namelen)));
        return o;
      });
}

// renameat2(2) with RENAME_NOREPLACE: atomically EEXIST when `to` exists,
// else `from` is renamed. EINVAL when the filesystem does not support the
// flag (ext4, XFS, btrfs and tmpfs do).
Napi::Value RenameNoReplace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string from = ArgString(info, 0, "from");
  std::string to = ArgString(info, 1, "to");
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<NoResult>::Start(
      env, "volagent.renameNoReplace",
      [=](NoResult&, SysError& err) {
        if (renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return true;
        return err.set(errno, "rename", from, to);
      },
      Undefined);
}

}  // namespace

void InitFileOps(Napi::Env env, Napi::Object exports) {
  exports.Set("ficlone", Napi::Function::New(env, Ficlone, "ficlone"));
  exports.Set("reflinkNewFile", Napi::Function::New(env, ReflinkNewFile, "reflinkNewFile"));
  exports.Set("ficloneRange", Napi::Function::New(env, FicloneRange, "ficloneRange"));
  exports.Set("copyFileRange", Napi::Function::New(env, CopyFileRange, "copyFileRange"));
  exports.Set("copyByReadWrite", Napi::Function::New(env, CopyByReadWrite, "copyByReadWrite"));
  exports.Set("writeData", Napi::Function::New(env, WriteData, "writeData"));
  exports.Set("dataExtents", Napi::Function::New(env, DataExtents, "dataExtents"));
  exports.Set("fiemap", Napi::Function::New(env, Fiemap, "fiemap"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("fsync", Napi::Function::New(env, Fsync, "fsync"));
  exports.Set("fdatasync", Napi::Function::New(env, Fdatasync, "fdatasync"));
  exports.Set("statfs", Napi::Function::New(env, Statfs, "statfs"));
  exports.Set("renameNoReplace", Napi::Function::New(env, RenameNoReplace, "renameNoReplace"));

  Napi::Object constants = Napi::Object::New(env);
  constants.Set("FALLOC_FL_KEEP_SIZE", Napi::Number::New(env, FALLOC_FL_KEEP_SIZE));
  constants.Set("FALLOC_FL_PUNCH_HOLE", Napi::Number::New(env, FALLOC_FL_PUNCH_HOLE));
  constants.Set("FALLOC_FL_ZERO_RANGE", Napi::Number::New(env, FALLOC_FL_ZERO_RANGE));
  constants.Set("FIEMAP_EXTENT_LAST", Napi::Number::New(env, FIEMAP_EXTENT_LAST));
  constants.Set("FIEMAP_EXTENT_UNKNOWN", Napi::Number::New(env, FIEMAP_EXTENT_UNKNOWN));
  constants.Set("FIEMAP_EXTENT_DELALLOC", Napi::Number::New(env, FIEMAP_EXTENT_DELALLOC));
  constants.Set("FIEMAP_EXTENT_UNWRITTEN", Napi::Number::New(env, FIEMAP_EXTENT_UNWRITTEN));
  constants.Set("FIEMAP_EXTENT_SHARED", Napi::Number::New(env, FIEMAP_EXTENT_SHARED));
  exports.Set("fileConstants", constants);
}

}  // namespace volagent
