// Runs one bounded kernel operation on the libuv pool and settles a promise.
// The job gets a plain C++ result struct and a SysError; it must not touch V8.
// The conversion to JavaScript runs on the main thread in OnOK.
#pragma once
#include <napi.h>

#include <functional>
#include <utility>

#include "errors.h"

namespace volagent {

template <typename Result>
class PromiseWorker final : public Napi::AsyncWorker {
 public:
  using Job = std::function<bool(Result&, SysError&)>;  // false: `error` is set
  using Convert = std::function<Napi::Value(Napi::Env, Result&)>;

  static Napi::Value Start(Napi::Env env, const char* name, Job job, Convert convert) {
    auto* worker = new PromiseWorker(env, name, std::move(job), std::move(convert));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Queue();
    return promise;
  }

 private:
  PromiseWorker(Napi::Env env, const char* name, Job job, Convert convert)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        job_(std::move(job)),
        convert_(std::move(convert)) {}

  void Execute() override { ok_ = job_(result_, error_); }

  void OnOK() override {
    Napi::HandleScope scope(Env());
    if (ok_) {
      deferred_.Resolve(convert_(Env(), result_));
    } else {
      deferred_.Reject(MakeNodeError(Env(), error_).Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  Napi::Promise::Deferred deferred_;
  Job job_;
  Convert convert_;
  Result result_{};
  SysError error_{};
  bool ok_ = false;
};

struct NoResult {};

inline Napi::Value Undefined(Napi::Env env, NoResult&) { return env.Undefined(); }

}  // namespace volagent
