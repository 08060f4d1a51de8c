// What a systemd service needs from the kernel: sd_notify's datagram, the
// credentials of a unix-socket peer and the address a passed socket is bound to. Policy (when to notify, who may connect)
// is in TypeScript (src/daemon/systemd.ts, src/api/peer-auth.ts).
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "async.h"
#include "exports.h"

namespace volagent {
namespace {

// sd_notify(3)'s wire contract: one datagram of newline-separated VAR=value
// assignments to the AF_UNIX socket $NOTIFY_SOCKET names: a filesystem path,
// or an abstract name when it begins with '@'. The sender is identified by
// the kernel (SCM_CREDENTIALS are attached on request by the receiver), so
// any thread of the main process may send it. MSG_DONTWAIT: a full receive
// queue is EAGAIN, never a wait.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string socketPath = ArgString(info, 0, "socketPath");
  std::string message = ArgString(info, 1, "message");
  if (env.IsExceptionPending()) return env.Undefined();
  if (socketPath.empty() || socketPath.size() >= sizeof(sockaddr_un::sun_path) || (socketPath[0] != '/' && socketPath[0] != '@')) {
    MakeTypeError(env, "The \"socketPath\" argument must be an absolute path or an @abstract name that fits sockaddr_un").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return PromiseWorker<NoResult>::Start(
      env, "volagent.sdnotify",
      [=](NoResult&, SysError& err) {
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return err.set(errno, "socket", socketPath);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::memcpy(address.sun_path, socketPath.data(), socketPath.size());
        if (socketPath[0] == '@') address.sun_path[0] = '\0';
        socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socketPath.size() + (socketPath[0] == '/' ? 1 : 0));
        ssize_t sent;
        do {
          sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&address), length);
        } while (sent < 0 && errno == EINTR);
        int sendErrno = errno;
        close(fd);
        if (sent < 0) return err.set(sendErrno, "sendto", socketPath);
        return true;
      },
      Undefined);
}

struct PeerCredentials {
  pid_t pid;
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};

// SO_PEERCRED and SO_PEERGROUPS of a connected unix socket: the pid, uid, gid
// and supplementary groups the peer had when it called connect(2), recorded
// by the kernel, not claimed by the peer. SO_PEERGROUPS answers ERANGE with
// the length it needs when the buffer is short.
Napi::Value PeerCredentialsOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  if (env.IsExceptionPending()) return env.Undefined();
  return PromiseWorker<PeerCredentials>::Start(
      env, "volagent.peercred",
      [=](PeerCredentials& result, SysError& err) {
        ucred credentials{};
        socklen_t length = sizeof credentials;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return err.set(errno, "getsockopt");
        result.pid = credentials.pid;
        result.uid = credentials.uid;
        result.gid = credentials.gid;
        std::vector<gid_t> groups(64);
        for (;;) {
          socklen_t bytes = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
          if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &bytes) == 0) {
            groups.resize(bytes / sizeof(gid_t));
            break;
          }
          if (errno != ERANGE || bytes <= groups.size() * sizeof(gid_t)) return err.set(errno, "getsockopt");
          groups.resize(bytes / sizeof(gid_t));
        }
        result.groups = std::move(groups);
        return true;
      },
      [](Napi::Env e, PeerCredentials& c) {
        Napi::Object object = Napi::Object::New(e);
        object.Set("pid", Napi::Number::New(e, c.pid));
        object.Set("uid", Napi::Number::New(e, c.uid));
        object.Set("gid", Napi::Number::New(e, c.gid));
        Napi::Array groups = Napi::Array::New(e, c.groups.size());
        for (size_t i = 0; i < c.groups.size(); i++) groups.Set(static_cast<uint32_t>(i), Napi::Number::New(e, c.groups[i]));
        object.Set("groups", groups);
        return object;
      });
}

// getsockname(2) of a socket (a listener systemd passed): what it is bound
// to. AF_UNIX: the path (the kernel's sun_path up to its NUL; an abstract
// name is returned with '@' for its leading NUL, an unbound socket as ""),
// AF_INET/AF_INET6: the numeric address and the port. Any other family is
// {family: "other"}. Runs on the calling thread: the kernel answers from the
// socket's own state without waiting.
Napi::Value SocketName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  if (env.IsExceptionPending()) return env.Undefined();
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    SysError err;
    err.set(errno, "getsockname");
    MakeNodeError(env, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object result = Napi::Object::New(env);
  if (address.ss_family == AF_UNIX) {
    const sockaddr_un* un = reinterpret_cast<const sockaddr_un*>(&address);
    size_t pathLength = length > offsetof(sockaddr_un, sun_path) ? length - offsetof(sockaddr_un, sun_path) : 0;
    std::string name(un->sun_path, pathLength);
    if (!name.empty() && name[0] == '\0') name[0] = '@';
    else name = name.substr(0, name.find('\0'));
    result.Set("family", "unix");
    result.Set("path", name);
  } else if (address.ss_family == AF_INET || address.ss_family == AF_INET6) {
    char text[INET6_ADDRSTRLEN] = {};
    bool v4 = address.ss_family == AF_INET;
    const void* raw = v4 ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(&address)->sin_addr)
                         : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr);
    inet_ntop(address.ss_family, raw, text, sizeof text);
    uint16_t port = ntohs(v4 ? reinterpret_cast<const sockaddr_in*>(&address)->sin_port : reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
    result.Set("family", v4 ? "inet" : "inet6");
    result.Set("address", std::string(text));
    result.Set("port", Napi::Number::New(env, port));
  } else {
    result.Set("family", "other");
  }
  return result;
}

}  // namespace

void InitServiceOps(Napi::Env env, Napi::Object exports) {
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentialsOf, "peerCredentials"));
  exports.Set("socketName", Napi::Function::New(env, SocketName, "socketName"));
}

}  // namespace volagent
