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
  std::vector<char> payload = {};  // bytes placed at data_start
  std::string uuid = {};      // DM_DEV_CREATE only
  uint32_t targetCount = 0;   // DM_TABLE_LOAD: how many dm_target_spec records the payload holds
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
    io->target_count = req.targetCount;
    if (!req.name.empty()) strncpy(io->name, req.name.c_str(), DM_NAME_LEN - 1);
    if (!req.uuid.empty()) strncpy(io->uuid, req.uuid.c_str(), DM_UUID_LEN - 1);
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

// What DM_DEV_STATUS (and most commands) answer about one device.
struct DeviceInfo {
  uint32_t major = 0, minor = 0, openCount = 0, targetCount = 0, eventNr = 0, flags = 0;
  std::string name, uuid;
};

DeviceInfo InfoOf(const std::vector<char>& reply) {
  const dm_ioctl& io = Header(reply);
  DeviceInfo info;
  info.major = major(io.dev);
  info.minor = minor(io.dev);
  info.openCount = static_cast<uint32_t>(io.open_count);
  info.targetCount = io.target_count;
  info.eventNr = io.event_nr;
  info.flags = io.flags;
  info.name.assign(io.name, strnlen(io.name, DM_NAME_LEN));
  info.uuid.assign(io.uuid, strnlen(io.uuid, DM_UUID_LEN));
  return info;
}

Napi::Value InfoToJs(Napi::Env e, DeviceInfo& info) {
  Napi::Object o = Napi::Object::New(e);
  o.Set("name", Napi::String::New(e, info.name));
  o.Set("uuid", Napi::String::New(e, info.uuid));
  o.Set("major", Napi::Number::New(e, info.major));
  o.Set("minor", Napi::Number::New(e, info.minor));
  o.Set("openCount", Napi::Number::New(e, info.openCount));
  o.Set("targetCount", Napi::Number::New(e, info.targetCount));
  o.Set("eventNr", Napi::Number::New(e, info.eventNr));
  o.Set("suspended", Napi::Boolean::New(e, (info.flags & DM_SUSPEND_FLAG) != 0));
  o.Set("readOnly", Napi::Boolean::New(e, (info.flags & DM_READONLY_FLAG) != 0));
  o.Set("activeTable", Napi::Boolean::New(e, (info.flags & DM_ACTIVE_PRESENT_FLAG) != 0));
  o.Set("inactiveTable", Napi::Boolean::New(e, (info.flags & DM_INACTIVE_PRESENT_FLAG) != 0));
  return o;
}

// A device name argument: what DM_NAME_LEN allows, checked before the kernel sees it.
std::string ArgDeviceName(const Napi::CallbackInfo& info, size_t i) {
  std::string name = ArgString(info, i, "name");
  if (!info.Env().IsExceptionPending() && (name.empty() || name.size() >= DM_NAME_LEN)) {
    MakeTypeError(info.Env(), "The \"name\" argument must be 1 to 127 bytes").ThrowAsJavaScriptException();
  }
  return name;
}

// One command on the device named by argument 0, answered with the device's
// info. `req` is the command without its name, which is filled in here.
Napi::Value DeviceCommand(const Napi::CallbackInfo& info, const char* resource, DmRequest req) {
  Napi::Env env = info.Env();
  req.name = ArgDeviceName(info, 0);
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<DeviceInfo>::Start(
      env, resource,
      [req](DeviceInfo& out, SysError& err) {
        std::vector<char> reply;
        if (!DmIoctl(req, reply, err)) return false;
        out = InfoOf(reply);
        return true;
      },
      InfoToJs);
}

// DM_DEV_CREATE: a new device with no table, suspended. The uuid (optional)
// is a second, immutable name.
Napi::Value DmCreate(const Napi::CallbackInfo& info) {
  std::string uuid = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : std::string();
  if (uuid.size() >= DM_UUID_LEN) {
    MakeTypeError(info.Env(), "The \"uuid\" argument must be at most 128 bytes").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  DmRequest req{DM_DEV_CREATE, "DM_DEV_CREATE", {}};
  req.uuid = uuid;
  return DeviceCommand(info, "volagent.dm_create", req);
}

// DM_DEV_REMOVE: the device and its tables go; EBUSY while it is open.
Napi::Value DmRemove(const Napi::CallbackInfo& info) {
  return DeviceCommand(info, "volagent.dm_remove", {DM_DEV_REMOVE, "DM_DEV_REMOVE", {}});
}

// DM_DEV_SUSPEND with DM_SUSPEND_FLAG: returns once in-flight io has completed
// (with DM_NOFLUSH_FLAG when `noflush`); later io waits until resume.
Napi::Value DmSuspend(const Napi::CallbackInfo& info) {
  const bool noflush = info.Length() > 1 && info[1].ToBoolean().Value();
  return DeviceCommand(info, "volagent.dm_suspend", {DM_DEV_SUSPEND, "DM_DEV_SUSPEND", {}, DM_SUSPEND_FLAG | (noflush ? DM_NOFLUSH_FLAG : 0u)});
}

// DM_DEV_SUSPEND without DM_SUSPEND_FLAG: an inactive table becomes the
// active one, then io flows again.
Napi::Value DmResume(const Napi::CallbackInfo& info) {
  return DeviceCommand(info, "volagent.dm_resume", {DM_DEV_SUSPEND, "DM_DEV_SUSPEND", {}});
}

// DM_DEV_STATUS: the device's info; ENXIO when no device has the name.
Napi::Value DmInfo(const Napi::CallbackInfo& info) {
  return DeviceCommand(info, "volagent.dm_info", {DM_DEV_STATUS, "DM_DEV_STATUS", {}});
}

struct Target {
  uint64_t start = 0, length = 0;
  std::string type, params;
};

// DM_TABLE_LOAD: `targets` into the inactive slot; with `readOnly`
// (DM_READONLY_FLAG) the device refuses writes once the table is live. Each
// dm_target_spec is followed by its NUL-terminated parameter string, padded to
// 8 bytes; `next` is the size of the record (from this spec to the following one).
Napi::Value DmLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) {
    MakeTypeError(env, "The \"targets\" argument must be an array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array list = info[1].As<Napi::Array>();
  std::vector<char> payload;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    if (!item.IsObject()) {
      MakeTypeError(env, "Each target must be {start, length, type, params}").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object o = item.As<Napi::Object>();
    Napi::Value start = o.Get("start"), length = o.Get("length"), type = o.Get("type"), params = o.Get("params");
    if (!start.IsNumber() || !length.IsNumber() || !type.IsString() || !params.IsString()) {
      MakeTypeError(env, "Each target must be {start, length, type, params}").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Target t{static_cast<uint64_t>(start.As<Napi::Number>().Int64Value()), static_cast<uint64_t>(length.As<Napi::Number>().Int64Value()),
             type.As<Napi::String>().Utf8Value(), params.As<Napi::String>().Utf8Value()};
    if (t.type.empty() || t.type.size() >= DM_MAX_TYPE_NAME || t.params.find('\0') != std::string::npos) {
      MakeTypeError(env, "A target type is 1 to 15 bytes and its params contain no NUL").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const size_t record = (sizeof(dm_target_spec) + t.params.size() + 1 + 7) & ~size_t{7};
    const size_t at = payload.size();
    payload.resize(at + record, 0);
    dm_target_spec spec{};
    spec.sector_start = t.start;
    spec.length = t.length;
    spec.next = static_cast<__u32>(record);
    strncpy(spec.target_type, t.type.c_str(), DM_MAX_TYPE_NAME - 1);
    memcpy(payload.data() + at, &spec, sizeof spec);
    memcpy(payload.data() + at + sizeof spec, t.params.c_str(), t.params.size() + 1);
  }
  const bool readOnly = info.Length() > 2 && info[2].ToBoolean().Value();
  DmRequest req{DM_TABLE_LOAD, "DM_TABLE_LOAD", {}, readOnly ? DM_READONLY_FLAG : 0u, std::move(payload)};
  req.targetCount = list.Length();
  return DeviceCommand(info, "volagent.dm_load", req);
}

// DM_TABLE_STATUS: each target of the active table with its status line, or
// with `table` (DM_STATUS_TABLE_FLAG) its table line. Here `next` counts from
// the first spec, not from the current one.
Napi::Value DmTable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgDeviceName(info, 0);
  const bool table = info.Length() > 1 && info[1].ToBoolean().Value();
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<std::vector<Target>>::Start(
      env, "volagent.dm_table",
      [=](std::vector<Target>& targets, SysError& err) {
        std::vector<char> reply;
        if (!DmIoctl({DM_TABLE_STATUS, "DM_TABLE_STATUS", name, table ? DM_STATUS_TABLE_FLAG : 0u, {}}, reply, err)) return false;
        const dm_ioctl& io = Header(reply);
        const size_t first = io.data_start;
        const size_t end = std::min<size_t>(io.data_size, reply.size());
        size_t offset = first;
        for (uint32_t i = 0; i < io.target_count && offset + sizeof(dm_target_spec) <= end; i++) {
          const auto* spec = reinterpret_cast<const dm_target_spec*>(reply.data() + offset);
          const char* text = reply.data() + offset + sizeof(dm_target_spec);
          targets.push_back({spec->sector_start, spec->length,
                             std::string(spec->target_type, strnlen(spec->target_type, DM_MAX_TYPE_NAME)),
                             std::string(text, strnlen(text, end - (offset + sizeof(dm_target_spec))))});
          offset = first + spec->next;
        }
        return true;
      },
      [](Napi::Env e, std::vector<Target>& targets) {
        Napi::Array out = Napi::Array::New(e, targets.size());
        for (size_t i = 0; i < targets.size(); i++) {
          Napi::Object o = Napi::Object::New(e);
          o.Set("start", Napi::Number::New(e, static_cast<double>(targets[i].start)));
          o.Set("length", Napi::Number::New(e, static_cast<double>(targets[i].length)));
          o.Set("type", Napi::String::New(e, targets[i].type));
          o.Set("params", Napi::String::New(e, targets[i].params));
          out.Set(static_cast<uint32_t>(i), o);
        }
        return out;
      });
}

// DM_TARGET_MSG: `message` to the target at `sector` (thin-pool: create_thin,
// create_snap, delete, set_transaction_id, ...). Resolves the target's
// answer text, or "" when it gives none (DM_DATA_OUT_FLAG unset).
Napi::Value DmMessage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgDeviceName(info, 0);
  int64_t sector = ArgInteger(info, 1, "sector");
  std::string message = ArgString(info, 2, "message");
  if (env.IsExceptionPending()) return env.Undefined();
  std::vector<char> payload(sizeof(dm_target_msg) + message.size() + 1, 0);
  auto* msg = reinterpret_cast<dm_target_msg*>(payload.data());
  msg->sector = static_cast<__u64>(sector);
  memcpy(payload.data() + sizeof(dm_target_msg), message.c_str(), message.size() + 1);
  return PromiseWorker<std::string>::Start(
      env, "volagent.dm_message",
      [=](std::string& answer, SysError& err) {
        std::vector<char> reply;
        if (!DmIoctl({DM_TARGET_MSG, "DM_TARGET_MSG", name, 0, payload}, reply, err)) return false;
        const dm_ioctl& io = Header(reply);
        if (io.flags & DM_DATA_OUT_FLAG) {
          const char* text = reply.data() + io.data_start;
          answer.assign(text, strnlen(text, std::min<size_t>(io.data_size, reply.size()) - io.data_start));
        }
        return true;
      },
      [](Napi::Env e, std::string& answer) { return Napi::String::New(e, answer); });
}

}  // namespace

void InitDeviceMapper(Napi::Env env, Napi::Object exports) {
  exports.Set("dmVersion", Napi::Function::New(env, DmVersion, "dmVersion"));
  exports.Set("dmListDevices", Napi::Function::New(env, DmListDevices, "dmListDevices"));
  exports.Set("dmCreate", Napi::Function::New(env, DmCreate, "dmCreate"));
  exports.Set("dmRemove", Napi::Function::New(env, DmRemove, "dmRemove"));
  exports.Set("dmSuspend", Napi::Function::New(env, DmSuspend, "dmSuspend"));
  exports.Set("dmResume", Napi::Function::New(env, DmResume, "dmResume"));
  exports.Set("dmInfo", Napi::Function::New(env, DmInfo, "dmInfo"));
  exports.Set("dmLoad", Napi::Function::New(env, DmLoad, "dmLoad"));
  exports.Set("dmTable", Napi::Function::New(env, DmTable, "dmTable"));
  exports.Set("dmMessage", Napi::Function::New(env, DmMessage, "dmMessage"));
}

}  // namespace volagent
