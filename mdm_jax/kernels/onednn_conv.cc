// oneDNN 2-d convolutions (NHWC activations, HWIO kernels) as XLA FFI custom calls for the CPU backend.
//
// Why: XLA:CPU's convolutions reach ~40% of what oneDNN does on the same cores in float32, and it runs no bf16
// convolution on AMX at all (mdm_jax/models/cpu_matmul.py). Three handlers cover a convolution and its two
// gradients; each builds its oneDNN primitive once per shape (cached), lets oneDNN pick its preferred kernel
// layout and reorders the HWIO kernel into it on every call (the kernel is small beside the activations).
// Accumulation is float32 in every mode; the float32 mode keeps oneDNN's strict f32 math (no implicit bf16/tf32).

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Mode : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// One cached plan: the primitive, and the reorder between the user's HWIO kernel and the primitive's layout.
struct Plan {
  dnnl::primitive prim;
  memory::desc wei_user_md, wei_prim_md;
  bool reorder_weights = false;
  dnnl::reorder wei_reorder;
  size_t scratch_bytes = 0;
};

struct Key {
  int64_t mode, act_dt, out_dt;  // all int64: no padding bytes, so memcmp/hash see only the fields
  int64_t n, c, h, w, o, kh, kw, oh, ow, sh, sw, plh, phh, plw, phw;
  bool operator==(const Key& k) const { return std::memcmp(this, &k, sizeof(Key)) == 0; }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(&k);
    size_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(Key); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
  }
};

memory::data_type DnnlType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return memory::data_type::f32;
    case ffi::DataType::BF16: return memory::data_type::bf16;
    default: return memory::data_type::undef;
  }
}

std::shared_ptr<Plan> MakePlan(const Key& k) {
  auto& eng = Engine();
  using tag = memory::format_tag;
  const auto act = static_cast<memory::data_type>(k.act_dt);
  const auto out = static_cast<memory::data_type>(k.out_dt);
  const memory::dims src{k.n, k.c, k.h, k.w}, wei{k.o, k.c, k.kh, k.kw}, dst{k.n, k.o, k.oh, k.ow};
  const memory::dims strides{k.sh, k.sw}, pad_l{k.plh, k.plw}, pad_r{k.phh, k.phw};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto plan = std::make_shared<Plan>();
  // The forward hint (needed by both backward primitives) runs in the activations' type.
  auto fwd_dst = k.mode == kForward ? out : act;
  // The kernel (or its gradient) as the user holds it: HWIO, in the activations' type (the gradient: the output's).
  const auto wei_dt = k.mode == kBackwardWeights ? out : act;
  plan->wei_user_md = memory::desc(wei, wei_dt, tag::hwio);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      eng, k.mode == kForward ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, memory::desc(src, act, tag::nhwc),
      memory::desc(wei, act, tag::any), memory::desc(dst, fwd_dst, tag::nhwc), strides, pad_l, pad_r, attr);
  memory::desc prim_wei;
  if (k.mode == kForward) {
    plan->prim = dnnl::convolution_forward(fwd);
    prim_wei = fwd.weights_desc();
    plan->scratch_bytes = fwd.scratchpad_desc().get_size();
  } else if (k.mode == kBackwardData) {
    auto bwd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, memory::desc(src, out, tag::nhwc), memory::desc(wei, act, tag::any),
        memory::desc(dst, act, tag::nhwc), strides, pad_l, pad_r, fwd, attr);
    plan->prim = dnnl::convolution_backward_data(bwd);
    prim_wei = bwd.weights_desc();
    plan->scratch_bytes = bwd.scratchpad_desc().get_size();
  } else {
    auto bwd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, memory::desc(src, act, tag::nhwc),
        memory::desc(wei, wei_dt, tag::any),
        memory::desc(dst, act, tag::nhwc), strides, pad_l, pad_r, fwd, attr);
    plan->prim = dnnl::convolution_backward_weights(bwd);
    prim_wei = bwd.diff_weights_desc();
    plan->scratch_bytes = bwd.scratchpad_desc().get_size();
  }
  plan->wei_prim_md = prim_wei;
  plan->reorder_weights = prim_wei != plan->wei_user_md;
  if (plan->reorder_weights) {
    if (k.mode == kBackwardWeights) {
      plan->wei_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(eng, prim_wei, eng, plan->wei_user_md));
    } else {
      plan->wei_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->wei_user_md, eng, prim_wei));
    }
  }
  return plan;
}

std::shared_ptr<Plan> GetPlan(const Key& k) {
  static std::mutex mu;
  static std::unordered_map<Key, std::shared_ptr<Plan>, KeyHash> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(k);
    if (it != cache.end()) return it->second;
  }
  auto plan = MakePlan(k);  // outside the lock: primitive creation JIT-compiles kernels
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(k, plan).first->second;
}

// The two working buffers (the primitive's scratchpad, the kernel in the primitive's layout), grown on demand and
// 64-byte aligned (oneDNN's preference). Shared by all threads: convolutions run one at a time (``run_mu``), so one
// set serves them all (per-thread sets cost a second set of the largest sizes, ~0.1 GiB for MDM-S64).
void* SharedBuffer(int which, size_t bytes) {
  constexpr size_t kAlign = 64;
  static std::vector<char> bufs[2];
  if (bufs[which].size() < bytes + kAlign) {
    bufs[which].clear();
    bufs[which].shrink_to_fit();  // free the old one first: never both at once
    bufs[which].resize(bytes + kAlign);
  }
  auto p = reinterpret_cast<uintptr_t>(bufs[which].data());
  return reinterpret_cast<void*>((p + kAlign - 1) & ~(kAlign - 1));
}

// act: the N-H-W-C operand (x, or the output cotangent g for backward-data); other: the HWIO kernel, or g for
// backward-weights; out: y, dx, or dw.
ffi::Error Run(Mode mode, ffi::AnyBuffer act, ffi::AnyBuffer other, ffi::Result<ffi::AnyBuffer> out, int64_t sh,
               int64_t sw, int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  const auto adt = DnnlType(act.element_type()), odt = DnnlType(out->element_type());
  if (adt == memory::data_type::undef || odt == memory::data_type::undef ||
      DnnlType(other.element_type()) != adt) {
    return ffi::Error::InvalidArgument("onednn conv: operands must be f32 or bf16, of one type");
  }
  if (act.dimensions().size() != 4 || other.dimensions().size() != 4 || out->dimensions().size() != 4) {
    return ffi::Error::InvalidArgument("onednn conv: expects rank-4 NHWC / HWIO buffers");
  }
  auto a = act.dimensions(), b = other.dimensions(), r = out->dimensions();
  Key k{};
  k.mode = mode;
  k.act_dt = static_cast<int>(adt);
  k.out_dt = static_cast<int>(odt);
  k.sh = sh; k.sw = sw; k.plh = plh; k.phh = phh; k.plw = plw; k.phw = phw;
  const void* x_ptr;
  const void* w_ptr;
  const void* g_ptr;
  if (mode == kForward) {  // act = x [N,H,W,C], other = w [KH,KW,C,O], out = y [N,OH,OW,O]
    k.n = a[0]; k.h = a[1]; k.w = a[2]; k.c = a[3];
    k.kh = b[0]; k.kw = b[1]; k.o = b[3];
    k.oh = r[1]; k.ow = r[2];
    x_ptr = act.untyped_data(); w_ptr = other.untyped_data(); g_ptr = nullptr;
  } else if (mode == kBackwardData) {  // act = g [N,OH,OW,O], other = w, out = dx [N,H,W,C]
    k.n = r[0]; k.h = r[1]; k.w = r[2]; k.c = r[3];
    k.kh = b[0]; k.kw = b[1]; k.o = b[3];
    k.oh = a[1]; k.ow = a[2];
    x_ptr = nullptr; w_ptr = other.untyped_data(); g_ptr = act.untyped_data();
  } else {  // act = x [N,H,W,C], other = g [N,OH,OW,O], out = dw [KH,KW,C,O]
    k.n = a[0]; k.h = a[1]; k.w = a[2]; k.c = a[3];
    k.kh = r[0]; k.kw = r[1]; k.o = r[3];
    k.oh = b[1]; k.ow = b[2];
    x_ptr = act.untyped_data(); w_ptr = nullptr; g_ptr = other.untyped_data();
  }
  // One convolution at a time: each already uses every core (OpenMP), and XLA may start independent ones (the two
  // gradients of a layer, or several virtual CPU devices) on different threads, each with its own OpenMP team.
  static std::mutex run_mu;
  std::lock_guard<std::mutex> run_lock(run_mu);
  try {
    auto plan = GetPlan(k);
    auto& eng = Engine();
    dnnl::stream strm(eng);
    using tag = memory::format_tag;
    const memory::dims src{k.n, k.c, k.h, k.w}, dst{k.n, k.o, k.oh, k.ow};
    memory scratch_mem(memory::desc({static_cast<int64_t>(plan->scratch_bytes)}, memory::data_type::u8, tag::a),
                       eng, SharedBuffer(0, plan->scratch_bytes));
    memory wei_user(plan->wei_user_md, eng, mode == kBackwardWeights ? out->untyped_data()
                                                                        : const_cast<void*>(w_ptr));
    memory wei = wei_user;
    if (plan->reorder_weights) {
      wei = memory(plan->wei_prim_md, eng, SharedBuffer(1, plan->wei_prim_md.get_size()));
      if (mode != kBackwardWeights) plan->wei_reorder.execute(strm, wei_user, wei);
    }
    if (mode == kForward) {
      memory x(memory::desc(src, adt, tag::nhwc), eng, const_cast<void*>(x_ptr));
      memory y(memory::desc(dst, odt, tag::nhwc), eng, out->untyped_data());
      plan->prim.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, y},
                                {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else if (mode == kBackwardData) {
      memory g(memory::desc(dst, adt, tag::nhwc), eng, const_cast<void*>(g_ptr));
      memory dx(memory::desc(src, odt, tag::nhwc), eng, out->untyped_data());
      plan->prim.execute(strm, {{DNNL_ARG_DIFF_DST, g}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dx},
                                {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else {
      memory x(memory::desc(src, adt, tag::nhwc), eng, const_cast<void*>(x_ptr));
      memory g(memory::desc(dst, adt, tag::nhwc), eng, const_cast<void*>(g_ptr));
      plan->prim.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, g}, {DNNL_ARG_DIFF_WEIGHTS, wei},
                                {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      if (plan->reorder_weights) plan->wei_reorder.execute(strm, wei, wei_user);
    }
    strm.wait();
  } catch (const std::exception& e) {  // dnnl::error, or std::bad_alloc from the buffers
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw,
                   int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  return Run(kForward, x, w, y, sh, sw, plh, phh, plw, phw);
}

ffi::Error BackwardData(ffi::AnyBuffer g, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t sh, int64_t sw,
                        int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  return Run(kBackwardData, g, w, dx, sh, sw, plh, phh, plw, phw);
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dw, int64_t sh,
                           int64_t sw, int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  return Run(kBackwardWeights, x, g, dw, sh, sw, plh, phh, plw, phw);
}

}  // namespace

#define MDM_CONV_BINDING                                                                                      \
  ffi::Ffi::Bind()                                                                                            \
      .Arg<ffi::AnyBuffer>()                                                                                  \
      .Arg<ffi::AnyBuffer>()                                                                                  \
      .Ret<ffi::AnyBuffer>()                                                                                  \
      .Attr<int64_t>("sh")                                                                                    \
      .Attr<int64_t>("sw")                                                                                    \
      .Attr<int64_t>("plh")                                                                                   \
      .Attr<int64_t>("phh")                                                                                   \
      .Attr<int64_t>("plw")                                                                                   \
      .Attr<int64_t>("phw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(MdmOnednnConvForward, Forward, MDM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MdmOnednnConvBackwardData, BackwardData, MDM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MdmOnednnConvBackwardWeights, BackwardWeights, MDM_CONV_BINDING);

// The version of the oneDNN this library runs (for logs and benchmark reports).
extern "C" const char* MdmOnednnVersion() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch) +
           (ver->cpu_runtime == DNNL_RUNTIME_OMP ? " (OpenMP)" : "");
  }();
  return v.c_str();
}
