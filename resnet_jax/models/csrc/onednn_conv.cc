// 2-D convolutions run by oneDNN from inside jitted XLA:CPU programs, through XLA's typed FFI.
//
// Three handlers, one per pass of a bias-free NHWC/HWIO convolution (strides, explicit
// asymmetric padding, feature groups, no dilation), for float32 and bfloat16 (bf16 operands and
// results, f32 accumulation inside oneDNN):
//
//   resnet_jax_onednn_conv_fwd          (x [N,H,W,C],   w [KH,KW,C/G,O]) -> y  [N,Ho,Wo,O]
//   resnet_jax_onednn_conv_bwd_data     (g [N,Ho,Wo,O], w [KH,KW,C/G,O]) -> dx [N,H,W,C]
//   resnet_jax_onednn_conv_bwd_weights  (x [N,H,W,C],   g [N,Ho,Wo,O])  -> dw [KH,KW,C/G,O]
//
// Attributes (int64): stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, groups.
// Every shape comes from the buffers, so one handler serves every layer. resnet_jax_onednn_supports
// (plain C) says whether this CPU has oneDNN kernels for a dtype.
//
// Activations are oneDNN's plain nhwc (XLA's layout, read and written in place). The kernel is
// passed to the primitive in the layout oneDNN prefers for it (format_tag::any) and reordered
// from/to XLA's HWIO per call when those differ (RESNET_JAX_ONEDNN_WEIGHTS=plain makes the
// primitive read HWIO directly, for comparison). Primitives, their reorders and descriptors are
// created once per shape/stride/padding/groups/dtype and kept in a process-wide map. The
// scratchpad (user mode) and reordered kernels live in per-thread, grow-only buffers, and each
// calling thread has its own stream, so concurrent calls (shard_map over several CPU devices,
// XLA running independent thunks in parallel) share nothing mutable but the guarded map.

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

enum Kind : int64_t { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

bool PlainWeights() {
  static const bool plain = [] {
    const char* v = std::getenv("RESNET_JAX_ONEDNN_WEIGHTS");
    return v != nullptr && std::string(v) == "plain";
  }();
  return plain;
}

// A per-thread, grow-only, 64-byte aligned buffer.
class Buffer {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) {
        size_ = 0;
        throw std::bad_alloc();
      }
    }
    return data_;
  }
  ~Buffer() { std::free(data_); }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Kernel reorders below this size run on the calling thread alone: an OpenMP fork/join costs
// more than the copy (ResNet-20's ~56 reorders per step took ~4 ms each when forked on a busy
// 2-core machine). The thread count is the calling thread's own OpenMP setting (per-thread ICV),
// restored after; resolved from the process (libdnnl loads libgomp), skipped if absent.
constexpr size_t kSerialReorderBytes = size_t{1} << 20;

struct OmpThreads {
  using Get = int (*)();
  using Set = void (*)(int);
  Get get = reinterpret_cast<Get>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
  Set set = reinterpret_cast<Set>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
};

void Reorder(const dnnl::primitive& reorder, dnnl::stream& s, dnnl::memory& from,
             dnnl::memory& to, size_t bytes) {
  static const OmpThreads omp;
  const bool serial = bytes < kSerialReorderBytes && omp.get != nullptr && omp.set != nullptr;
  const int threads = serial ? omp.get() : 0;
  if (serial && threads > 1) omp.set(1);
  reorder.execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
  if (serial && threads > 1) omp.set(threads);
}

thread_local Buffer scratch_buffer;
thread_local Buffer weights_buffer;

struct Geometry {
  int64_t n, h, w, c, ho, wo, o, kh, kw, cg, groups;
  int64_t sh, sw, pt, pb, pl, pr;
};

struct Attrs {
  int64_t stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, groups;
};

// One cached primitive with what it needs besides the operands.
struct Entry {
  dnnl::primitive prim;
  dnnl::memory::desc x_md, y_md;    // activations (nhwc): x is src/diff_src, y dst/diff_dst
  dnnl::memory::desc user_w_md;     // the kernel as XLA holds it (HWIO)
  dnnl::memory::desc prim_w_md;     // the kernel as the primitive reads or writes it
  bool reorder = false;             // prim_w_md != user_w_md
  dnnl::primitive w_reorder;        // user -> prim (fwd, bwd data), prim -> user (bwd weights)
  size_t scratch_bytes = 0;
};

std::mutex cache_mutex;
std::map<std::vector<int64_t>, std::unique_ptr<Entry>> cache;

dt DnnlType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32:
      return dt::f32;
    case ffi::DataType::BF16:
      return dt::bf16;
    default:
      return dt::undef;
  }
}

dnnl::memory::desc WeightsDesc(const Geometry& g, dt type, bool any) {
  // HWIO with O = G * Og is oneDNN's hwigo (dims g, o, i, h, w) for grouped convolutions.
  if (g.groups == 1) return {{g.o, g.cg, g.kh, g.kw}, type, any ? tag::any : tag::hwio};
  return {{g.groups, g.o / g.groups, g.cg, g.kh, g.kw}, type, any ? tag::any : tag::hwigo};
}

std::unique_ptr<Entry> Create(Kind kind, const Geometry& g, dt type) {
  auto e = std::make_unique<Entry>();
  e->x_md = dnnl::memory::desc({g.n, g.c, g.h, g.w}, type, tag::nhwc);
  e->y_md = dnnl::memory::desc({g.n, g.o, g.ho, g.wo}, type, tag::nhwc);
  e->user_w_md = WeightsDesc(g, type, false);
  const bool any = !PlainWeights();
  const dnnl::memory::desc w_md = WeightsDesc(g, type, any);
  const dims strides{g.sh, g.sw}, pad_l{g.pt, g.pl}, pad_r{g.pb, g.pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto alg = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(Engine(), dnnl::prop_kind::forward_training, alg,
      e->x_md, w_md, e->y_md, strides, pad_l, pad_r, attr);
  if (kind == kFwd) {
    e->prim_w_md = fwd.weights_desc();
    e->scratch_bytes = fwd.scratchpad_desc().get_size();
    e->prim = dnnl::convolution_forward(fwd);
  } else if (kind == kBwdData) {
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), alg, e->x_md, w_md, e->y_md,
                                                       strides, pad_l, pad_r, fwd, attr);
    e->prim_w_md = pd.weights_desc();
    e->scratch_bytes = pd.scratchpad_desc().get_size();
    e->prim = dnnl::convolution_backward_data(pd);
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), alg, e->x_md, WeightsDesc(g, dt::f32, any), e->y_md, strides, pad_l, pad_r,
        fwd, attr);
    // The weight gradient is accumulated and written in f32 and rounded to bf16 by the reorder.
    e->prim_w_md = pd.diff_weights_desc();
    e->scratch_bytes = pd.scratchpad_desc().get_size();
    e->prim = dnnl::convolution_backward_weights(pd);
  }
  e->reorder = e->prim_w_md != e->user_w_md;
  if (e->reorder) {
    dnnl::reorder::primitive_desc rpd =
        kind == kBwdWeights
            ? dnnl::reorder::primitive_desc(Engine(), e->prim_w_md, Engine(), e->user_w_md)
            : dnnl::reorder::primitive_desc(Engine(), e->user_w_md, Engine(), e->prim_w_md);
    e->w_reorder = dnnl::reorder(rpd);
  }
  return e;
}

const Entry& Lookup(Kind kind, const Geometry& g, dt type) {
  std::vector<int64_t> key{kind,  static_cast<int64_t>(type),
                           g.n,   g.h,  g.w,  g.c,  g.ho, g.wo, g.o, g.kh, g.kw, g.groups,
                           g.sh,  g.sw, g.pt, g.pb, g.pl, g.pr};
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(std::move(key), Create(kind, g, type)).first;
  return *it->second;
}

ffi::Error CheckGeometry(const Geometry& g) {
  if (g.groups < 1 || g.c != g.cg * g.groups || g.o % g.groups != 0)
    return ffi::Error::InvalidArgument("onednn conv: inconsistent feature groups");
  if (g.sh < 1 || g.sw < 1 || g.pt < 0 || g.pb < 0 || g.pl < 0 || g.pr < 0)
    return ffi::Error::InvalidArgument("onednn conv: bad strides or negative padding");
  if (g.ho != (g.h + g.pt + g.pb - g.kh) / g.sh + 1 ||
      g.wo != (g.w + g.pl + g.pr - g.kw) / g.sw + 1)
    return ffi::Error::InvalidArgument("onednn conv: output size does not match the geometry");
  return ffi::Error::Success();
}

// x: activations [N,H,W,C]; w: kernel [KH,KW,Cg,O]; y: activations [N,Ho,Wo,O] (shapes only).
ffi::Error Run(Kind kind, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
               ffi::Span<const int64_t> y, ffi::DataType type, const Attrs& a, void* x_ptr,
               void* w_ptr, void* y_ptr) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: operands must be 4-D (NHWC / HWIO)");
  const dt dtype = DnnlType(type);
  if (dtype == dt::undef)
    return ffi::Error::InvalidArgument("onednn conv: only float32 and bfloat16 are supported");
  Geometry g{x[0], x[1], x[2], x[3], y[1], y[2], y[3], w[0], w[1], w[2], a.groups,
             a.stride_h, a.stride_w, a.pad_top, a.pad_bottom, a.pad_left, a.pad_right};
  if (y[0] != g.n || w[3] != g.o)
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not agree");
  if (ffi::Error err = CheckGeometry(g); err.failure()) return err;
  const size_t elem = type == ffi::DataType::F32 ? 4 : 2;
  if (g.n * g.h * g.w * g.c == 0 || g.n * g.ho * g.wo * g.o == 0 || g.kh * g.kw * g.cg == 0) {
    // Nothing to convolve: the result is zeros (or empty).
    const int64_t count = kind == kFwd ? g.n * g.ho * g.wo * g.o
                          : kind == kBwdData ? g.n * g.h * g.w * g.c
                                             : g.kh * g.kw * g.cg * g.o;
    std::memset(kind == kFwd ? y_ptr : kind == kBwdData ? x_ptr : w_ptr, 0, count * elem);
    return ffi::Error::Success();
  }
  try {
    const Entry& e = Lookup(kind, g, dtype);
    dnnl::engine& eng = Engine();
    dnnl::stream& s = Stream();
    dnnl::memory xm(e.x_md, eng, x_ptr), ym(e.y_md, eng, y_ptr), uw(e.user_w_md, eng, w_ptr);
    dnnl::memory pw = e.reorder
                          ? dnnl::memory(e.prim_w_md, eng,
                                         weights_buffer.get(e.prim_w_md.get_size()))
                          : uw;
    dnnl::memory scratch(dnnl::memory::desc({static_cast<int64_t>(e.scratch_bytes)}, dt::u8,
                                            tag::a),
                         eng, e.scratch_bytes ? scratch_buffer.get(e.scratch_bytes) : nullptr);
    if (kind == kFwd) {
      if (e.reorder) Reorder(e.w_reorder, s, uw, pw, e.prim_w_md.get_size());
      e.prim.execute(s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, pw}, {DNNL_ARG_DST, ym},
                         {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == kBwdData) {
      if (e.reorder) Reorder(e.w_reorder, s, uw, pw, e.prim_w_md.get_size());
      e.prim.execute(s, {{DNNL_ARG_DIFF_SRC, xm}, {DNNL_ARG_WEIGHTS, pw},
                         {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      e.prim.execute(s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_WEIGHTS, pw},
                         {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e.reorder) Reorder(e.w_reorder, s, pw, uw, e.prim_w_md.get_size());
    }
    s.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("onednn conv: ") + err.what());
  } catch (const std::exception& err) {
    return ffi::Error::Internal(std::string("onednn conv: ") + err.what());
  }
  return ffi::Error::Success();
}

Attrs MakeAttrs(int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                int64_t groups) {
  return {sh, sw, pt, pb, pl, pr, groups};
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                   int64_t groups) {
  if (x.element_type() != w.element_type() || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("onednn conv: operands must share one dtype");
  return Run(kFwd, x.dimensions(), w.dimensions(), y->dimensions(), x.element_type(),
             MakeAttrs(sh, sw, pt, pb, pl, pr, groups), x.untyped_data(), w.untyped_data(),
             y->untyped_data());
}

ffi::Error ConvBwdData(ffi::AnyBuffer g, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                       int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                       int64_t groups) {
  if (g.element_type() != w.element_type() || dx->element_type() != g.element_type())
    return ffi::Error::InvalidArgument("onednn conv: operands must share one dtype");
  return Run(kBwdData, dx->dimensions(), w.dimensions(), g.dimensions(), g.element_type(),
             MakeAttrs(sh, sw, pt, pb, pl, pr, groups), dx->untyped_data(), w.untyped_data(),
             g.untyped_data());
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dw,
                          int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                          int64_t groups) {
  if (x.element_type() != g.element_type() || dw->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("onednn conv: operands must share one dtype");
  return Run(kBwdWeights, x.dimensions(), dw->dimensions(), g.dimensions(), x.element_type(),
             MakeAttrs(sh, sw, pt, pb, pl, pr, groups), x.untyped_data(), dw->untyped_data(),
             g.untyped_data());
}

}  // namespace

// 1 when oneDNN can create all three passes for `type_code` (0 float32, 1 bfloat16) on this CPU,
// else 0: oneDNN's bf16 convolutions need AVX-512 (or AVX2-VNNI-2), and without them every bf16
// primitive fails at creation, so Python checks here at trace time and keeps such dtypes on XLA.
// Probes a plain and a grouped strided geometry; nothing is added to the primitive cache.
extern "C" int resnet_jax_onednn_supports(int type_code) {
  const dt type = type_code == 0 ? dt::f32 : type_code == 1 ? dt::bf16 : dt::undef;
  if (type == dt::undef) return 0;
  const Geometry probes[] = {{1, 8, 8, 16, 8, 8, 16, 3, 3, 16, 1, 1, 1, 1, 1, 1, 1},
                             {1, 8, 8, 16, 4, 4, 16, 3, 3, 8, 2, 2, 2, 1, 1, 1, 1}};
  try {
    for (const Geometry& g : probes)
      for (Kind kind : {kFwd, kBwdData, kBwdWeights}) Create(kind, g, type);
  } catch (const std::exception&) {
    return 0;
  }
  return 1;
}

#define RESNET_JAX_CONV_BINDING()  \
  ffi::Ffi::Bind()                          \
      .Arg<ffi::AnyBuffer>()                \
      .Arg<ffi::AnyBuffer>()                \
      .Ret<ffi::AnyBuffer>()                \
      .Attr<int64_t>("stride_h")            \
      .Attr<int64_t>("stride_w")            \
      .Attr<int64_t>("pad_top")             \
      .Attr<int64_t>("pad_bottom")          \
      .Attr<int64_t>("pad_left")            \
      .Attr<int64_t>("pad_right")           \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_jax_onednn_conv_fwd, ConvFwd,
                              RESNET_JAX_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_jax_onednn_conv_bwd_data, ConvBwdData,
                              RESNET_JAX_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_jax_onednn_conv_bwd_weights, ConvBwdWeights,
                              RESNET_JAX_CONV_BINDING());

// oneDNN's version as major * 10000 + minor * 100 + patch (a load-time sanity check).
extern "C" int resnet_jax_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
