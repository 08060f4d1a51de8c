// Device-mapper control interface (include/uapi/linux/dm-ioctl.h). Every
// command goes through DmIoctl, the one chokepoint that stamps the interface
// version, lays out the payload after the header, grows the buffer when the
// kernel sets DM_BUFFER_FULL_FLAG, and names the command and device in errors.
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "args.h"
#include "async.h"
#include "exports.h"

namespace volagent {
namespace {

constexpr const char* kControlPath = "/dev/mapper/control";
constexpr size_t kInitialBuffer = 16 * 1024;
constexpr size_t kMaxBuffer = 64 * 1024 * 1024;

struct DmRequest {
  unsigned long command;
  const char* commandName;  // "DM_VERSION", shown in errors as the syscall
  std::string name;         // device name, "" when the command has none
  uint32_t flags = 0;
  std::vector<char> payload;  // bytes placed at data_start
};

// On success `reply` holds the whole buffer; its head is the kernel's dm_ioctl.
bool DmIoctl(const DmRequest& req, std::vector<char>& reply, SysError& err) {
  int control = open(kControlPath, O_RDWR | O_CLOEXEC);
  if (control < 0) return err.set(errno, req.commandName, kControlPath);
  const size_t dataStart = (sizeof(dm_ioctl) + 7) & ~size_t{7};
  size_t size = std::max(kInitialBuffer, dataStart + req.payload.size());
  bool ok = false;
  for (;;) {
    reply.assign(size, 0);
    auto* io = reinterpret_cast<dm_ioctl*>(reply.data());
    io->version[0] = DM_VERSION_MAJOR;
    io->version[1] = 0;
    io->version[2] = 0;
    io->data_size = static_cast<__u32>(size);
    io->data_start = static_cast<__u32>(dataStart);
    io->flags = req.flags;
    if (!req.name.empty()) strncpy(io->name, req.name.c_str(), DM_NAME_LEN - 1);
    if (!req.payload.empty()) memcpy(reply.data() + dataStart, req.payload.data(), req.payload.size());
    if (ioctl(control, req.command, io) != 0) {
      int saved = errno;
      if (saved == EINTR) continue;
      err.set(saved, req.commandName, req.name);
      break;
    }
    if ((io->flags & DM_BUFFER_FULL_FLAG) == 0) {
      ok = true;
      break;
    }
    if (size * 2 > kMaxBuffer) {
      err.set(ENOBUFS, req.commandName, req.name);
      break;
    }
    size *= 2;
  }
  close(control);
  return ok;
}

const dm_ioctl& Header(const std::vector<char>& reply) { return *reinterpret_cast<const dm_ioctl*>(reply.data()); }

struct Version {
  uint32_t major, minor, patch;
};

Napi::Value DmVersion(const Napi::CallbackInfo& info) {
  return PromiseWorker<Version>::Start(
      info.Env(), "volagent.dm_version",
      [](Version& v, SysError& err) {
        std::vector<char> reply;
        if (!DmIoctl({DM_VERSION, "DM_VERSION", {}, 0, {}}, reply, err)) return false;
        const dm_ioctl& io = Header(reply);
        v = {io.version[0], io.version[1], io.version[2]};
        return true;
      },
      [](Napi::Env e, Version& v) {
        Napi::Object o = Napi::Object::New(e);
        o.Set("major", Napi::Number::New(e, v.major));
        o.Set("minor", Napi::Number::New(e, v.minor));
        o.Set("patch", Napi::Number::New(e, v.patch));
        return o;
      });
}

struct Device {
  std::string name;
  uint32_t major, minor;
};

Napi::Value DmListDevices(const Napi::CallbackInfo& info) {
  return PromiseWorker<std::vector<Device>>::Start(
      info.Env(), "volagent.dm_list_devices",
      [](std::vector<Device>& devices, SysError& err) {
        std::vector<char> reply;
        if (!DmIoctl({DM_LIST_DEVICES, "DM_LIST_DEVICES", {}, 0, {}}, reply, err)) return false;
        const dm_ioctl& io = Header(reply);
        // A chain of dm_name_list records; `next` is the offset from one record
        // to the following, 0 on the last; dev == 0 means the list is empty.
        size_t offset = io.data_start;
        const size_t end = std::min<size_t>(io.data_size, reply.size());
        while (offset + sizeof(dm_name_list) <= end) {
          const auto* entry = reinterpret_cast<const dm_name_list*>(reply.data() + offset);
          if (entry->dev == 0) break;
          devices.push_back({entry->name, major(entry->dev), minor(entry->dev)});
          if (entry->next == 0) break;
          offset += entry->next;
        }
        return true;
      },
      [](Napi::Env e, std::vector<Device>& devices) {
        Napi::Array out = Napi::Array::New(e, devices.size());
        for (size_t i = 0; i < devices.size(); i++) {
          Napi::Object o = Napi::Object::New(e);
          o.Set("name", Napi::String::New(e, devices[i].name));
          o.Set("major", Napi::Number::New(e, devices[i].major));
          o.Set("minor", Napi::Number::New(e, devices[i].minor));
          out.Set(static_cast<uint32_t>(i), o);
        }
        return out;
      });
}

}  // namespace

void InitDeviceMapper(Napi::Env env, Napi::Object exports) {
  exports.Set("dmVersion", Napi::Function::New(env, DmVersion, "dmVersion"));
  exports.Set("dmListDevices", Napi::Function::New(env, DmListDevices, "dmListDevices"));
}

}  // namespace volagent
