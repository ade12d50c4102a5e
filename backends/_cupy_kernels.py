"""CUDA source of the fused kernels of the ``cupy`` backend (compiled with NVRTC through ``cupy.RawModule``).

Two templated kernels, instantiated for ``float`` and ``double`` (the compute dtype is the accumulation
dtype: float32 inputs accumulate in float32):

``kd_row_stats<T>``: one block per row, one read of the row.
    Each thread walks its strided share of the row keeping *online* (streaming) softmax statistics, then
    the block merges them in shared memory. Per row it writes

    * ``m_s``   = max_v s_v                         (raw maximum; max(s/T) = m_s / T since T > 0)
    * ``lse1``  = log sum_v exp(s_v - m_s)          (so log softmax(s)   = (s - m_s)       - lse1)
    * ``lseq``  = log sum_v exp((s_v - m_s) / T)    (so log softmax(s/T) = (s - m_s) / T   - lseq)
    * ``m_t``   = max_v t_v,
      ``lsep``  = log sum_v exp((t_v - m_t) / T)    (so log softmax(t/T) = (t - m_t) / T   - lsep)
    * ``ce``    = m_s + lse1 - s_y                  (0 on ignored rows)
    * ``kl``    = KL(softmax(t/T) || softmax(s/T))  (0 on ignored rows when labels are given)
    * ``loss``  = alpha * ce + (1 - alpha) T^2 * kl (a term whose weight is 0 is exactly 0)
    * ``flags`` = bit set of input problems (NaN, +inf, no finite logit, label out of range), so that the
      host validates every value with one device-to-host read.

    The KL comes out of the same single pass. With ``a_v = t_v / T``, ``b_v = s_v / T``,
    ``p = softmax(a)``, ``q = softmax(b)``:
    ``KL = sum_v p_v (a_v - b_v) - lse(a) + lse(b) = W / D_p + (m_s - m_t) / T + lseq - lsep``, where
    ``D_p = sum_v exp((t_v - m_t)/T)`` and ``W = sum_v exp((t_v - m_t)/T) * (t_v - s_v)/T`` are kept online
    (rescaled together when ``m_t`` grows). ``(t_v - s_v)/T`` is formed before scaling, so it has no
    cancellation. Entries where ``t_v = -inf`` (p_v = 0) contribute exactly 0. Entries where
    ``s_v = -inf`` but ``t_v`` is finite would make W infinite; they are kept out of W and tracked by their
    largest teacher logit ``m_x``: the KL is ``+inf`` iff such an entry has ``p_v > 0``, which is the
    reference's rule (a term with p_v == 0 is exactly 0).

``kd_elementwise<T>``: one thread per element (grid-stride), using the row statistics.
    ``MODE_SOFTMAX``: exp((x - m)/T - lseq); ``MODE_LOG_SOFTMAX``: (x - m)/T - lseq;
    ``MODE_GRADIENT``: scale * [alpha (softmax(s) - e_y) + (1 - alpha) T (softmax(s/T) - softmax(t/T))],
    0 on ignored rows, with ``scale`` read from device memory (1 / max(#valid rows, 1) for ``mean``, else
    1), so that no count has to come back to the host.

Arguments that an operation does not need (the teacher for softmax, the labels for kl_divergence) are
passed as a harmless array and switched off with ``has_teacher`` / ``has_labels``, never as null pointers.

Layouts: logits are C-contiguous ``[n_rows, V]``; labels ``[n_rows]`` int64; the row statistics are one
``[N_STATS, n_rows]`` array of the compute dtype, row ``STAT_*`` holding one statistic.
"""

from __future__ import annotations

# Indices into the [N_STATS, n_rows] statistics array (kept in sync with the #defines in SOURCE).
STAT_M_S, STAT_LSE1, STAT_LSEQ, STAT_M_T, STAT_LSEP, STAT_CE, STAT_KL, STAT_LOSS = range(8)
N_STATS = 8

# Bits of the per-row flags.
FLAG_NAN_S, FLAG_POSINF_S, FLAG_NOFINITE_S = 1, 2, 4
FLAG_NAN_T, FLAG_POSINF_T, FLAG_NOFINITE_T = 8, 16, 32
FLAG_BAD_LABEL = 64

# Modes of kd_elementwise.
MODE_SOFTMAX, MODE_LOG_SOFTMAX, MODE_GRADIENT = 0, 1, 2

MAX_THREADS = 256
"""Threads per block of kd_row_stats (a power of two; the shared-memory arrays are this size)."""

SOURCE = r"""
// ---------------------------------------------------------------------------------------------------
// Fused KD kernels. See backends/_cupy_kernels.py for the math; names follow reference/kd.py.
// ---------------------------------------------------------------------------------------------------

#define MAX_THREADS 256

#define STAT_M_S 0
#define STAT_LSE1 1
#define STAT_LSEQ 2
#define STAT_M_T 3
#define STAT_LSEP 4
#define STAT_CE 5
#define STAT_KL 6
#define STAT_LOSS 7

#define FLAG_NAN_S 1
#define FLAG_POSINF_S 2
#define FLAG_NOFINITE_S 4
#define FLAG_NAN_T 8
#define FLAG_POSINF_T 16
#define FLAG_NOFINITE_T 32
#define FLAG_BAD_LABEL 64
// Internal: "this thread saw a finite student / teacher logit" (cleared before flags are written).
#define SEEN_FINITE_S 128
#define SEEN_FINITE_T 256

#define MODE_SOFTMAX 0
#define MODE_LOG_SOFTMAX 1
#define MODE_GRADIENT 2

// exp, log and +inf for the compute type (float math for float, double math for double).
__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }

template <typename T> struct Inf;
template <> struct Inf<float> {
    __device__ __forceinline__ static float get() { return __int_as_float(0x7f800000); }
};
template <> struct Inf<double> {
    __device__ __forceinline__ static double get() { return __longlong_as_double(0x7ff0000000000000LL); }
};

// exp(x) for a rescale factor whose exponent may be -inf - (-inf) (two empty states): 0, never NaN.
template <typename T>
__device__ __forceinline__ T rescale(T from_max, T to_max, T inv_t) {
    return (from_max == -Inf<T>::get()) ? T(0) : ex((from_max - to_max) * inv_t);
}

// Streaming statistics of one row (or of one thread's share of it).
template <typename T>
struct RowState {
    T m_s;   // max of the student logits seen (-inf when none)
    T d1;    // sum exp(s - m_s)
    T dq;    // sum exp((s - m_s) / T)
    T m_t;   // max of the teacher logits seen
    T dp;    // sum exp((t - m_t) / T)
    T w;     // sum exp((t - m_t) / T) * (t - s) / T over entries with finite s
    T m_x;   // max teacher logit among entries with s = -inf and t finite (KL is +inf if p > 0 there)
    int flags;

    __device__ void init() {
        const T ninf = -Inf<T>::get();
        m_s = ninf; d1 = T(0); dq = T(0);
        m_t = ninf; dp = T(0); w = T(0); m_x = ninf;
        flags = 0;
    }

    // Add one student logit (s > -inf, not NaN).
    __device__ void add_student(T s, T inv_t) {
        if (s > m_s) {
            d1 = d1 * rescale(m_s, s, T(1)) + T(1);
            dq = dq * rescale(m_s, s, inv_t) + T(1);
            m_s = s;
        } else {
            d1 += ex(s - m_s);
            dq += ex((s - m_s) * inv_t);
        }
    }

    // Add one teacher logit t > -inf (not NaN) paired with its student logit s.
    __device__ void add_teacher(T t, T s, T inv_t) {
        const bool student_masked = (s == -Inf<T>::get());
        const T diff = student_masked ? T(0) : (t - s) * inv_t;
        if (student_masked && t > m_x) m_x = t;
        if (t > m_t) {
            const T r = rescale(m_t, t, inv_t);
            dp = dp * r + T(1);
            w = w * r + diff;
            m_t = t;
        } else {
            const T e = ex((t - m_t) * inv_t);
            dp += e;
            w += e * diff;
        }
    }

    // Merge another thread's state into this one.
    __device__ void merge(const RowState& o, T inv_t) {
        const T ms = m_s > o.m_s ? m_s : o.m_s;
        if (ms != -Inf<T>::get()) {
            d1 = d1 * rescale(m_s, ms, T(1)) + o.d1 * rescale(o.m_s, ms, T(1));
            dq = dq * rescale(m_s, ms, inv_t) + o.dq * rescale(o.m_s, ms, inv_t);
            m_s = ms;
        }
        const T mt = m_t > o.m_t ? m_t : o.m_t;
        if (mt != -Inf<T>::get()) {
            const T ra = rescale(m_t, mt, inv_t);
            const T rb = rescale(o.m_t, mt, inv_t);
            dp = dp * ra + o.dp * rb;
            w = w * ra + o.w * rb;
            m_t = mt;
        }
        if (o.m_x > m_x) m_x = o.m_x;
        flags |= o.flags;
    }
};

// Classify one logit into the flags; return true when it is a usable value (finite or -inf).
template <typename T>
__device__ __forceinline__ bool check_logit(T x, int& flags, int nan_bit, int posinf_bit, int finite_bit) {
    if (x != x) { flags |= nan_bit; return false; }
    if (x == Inf<T>::get()) { flags |= posinf_bit; return false; }
    if (x != -Inf<T>::get()) flags |= finite_bit;
    return true;
}

// One block per row. has_teacher == 0: no teacher (softmax, log_softmax, cross_entropy; t is not read);
// has_labels == 0: no labels (softmax, log_softmax, kl_divergence; y is not read). stats is [8, n_rows],
// flags is [n_rows].
template <typename T>
__global__ void kd_row_stats(
    const T* __restrict__ s, const T* __restrict__ t, const long long* __restrict__ y,
    int has_teacher, int has_labels,
    long long n_rows, long long vocab, T inv_t, T alpha, T kl_weight, long long ignore_index,
    T* __restrict__ stats, int* __restrict__ flags_out)
{
    __shared__ RowState<T> shared[MAX_THREADS];
    const long long row = blockIdx.x;
    if (row >= n_rows) return;
    const T* s_row = s + row * vocab;
    const T* t_row = has_teacher ? t + row * vocab : nullptr;

    // 1. Each thread streams over its strided share of the row.
    RowState<T> st;
    st.init();
    for (long long v = threadIdx.x; v < vocab; v += blockDim.x) {
        const T sv = s_row[v];
        const bool s_ok = check_logit(sv, st.flags, FLAG_NAN_S, FLAG_POSINF_S, SEEN_FINITE_S);
        if (s_ok && sv != -Inf<T>::get()) st.add_student(sv, inv_t);
        if (t_row) {
            const T tv = t_row[v];
            const bool t_ok = check_logit(tv, st.flags, FLAG_NAN_T, FLAG_POSINF_T, SEEN_FINITE_T);
            if (t_ok && s_ok && tv != -Inf<T>::get()) st.add_teacher(tv, sv, inv_t);
        }
    }

    // 2. Tree reduction of the thread states in shared memory (blockDim.x is a power of two).
    shared[threadIdx.x] = st;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) shared[threadIdx.x].merge(shared[threadIdx.x + stride], inv_t);
        __syncthreads();
    }
    if (threadIdx.x != 0) return;

    // 3. Thread 0 finishes the row.
    const RowState<T> r = shared[0];
    int flags = r.flags & (FLAG_NAN_S | FLAG_POSINF_S | FLAG_NAN_T | FLAG_POSINF_T);
    if (!(r.flags & SEEN_FINITE_S)) flags |= FLAG_NOFINITE_S;
    if (t_row && !(r.flags & SEEN_FINITE_T)) flags |= FLAG_NOFINITE_T;

    const T lse1 = lg(r.d1);
    const T lseq = lg(r.dq);
    const T lsep = lg(r.dp);

    bool valid = true;
    T ce = T(0);
    if (has_labels) {
        const long long label = y[row];
        valid = (label != ignore_index);
        if (valid && (label < 0 || label >= vocab)) {
            flags |= FLAG_BAD_LABEL;
            valid = false;
        }
        if (valid) ce = r.m_s + lse1 - s_row[label];  // +inf when the label's logit is -inf
    }

    T kl = T(0);
    if (t_row && valid) {
        kl = r.w / r.dp + (r.m_s - r.m_t) * inv_t + lseq - lsep;
        // An entry with s = -inf where the teacher has probability > 0 makes the KL infinite.
        if (r.m_x != -Inf<T>::get() && ex((r.m_x - r.m_t) * inv_t - lsep) > T(0)) kl = Inf<T>::get();
    }

    T loss = T(0);
    if (alpha != T(0)) loss += alpha * ce;
    if (kl_weight != T(0)) loss += kl_weight * kl;

    stats[STAT_M_S * n_rows + row] = r.m_s;
    stats[STAT_LSE1 * n_rows + row] = lse1;
    stats[STAT_LSEQ * n_rows + row] = lseq;
    stats[STAT_M_T * n_rows + row] = r.m_t;
    stats[STAT_LSEP * n_rows + row] = lsep;
    stats[STAT_CE * n_rows + row] = ce;
    stats[STAT_KL * n_rows + row] = kl;
    stats[STAT_LOSS * n_rows + row] = loss;
    flags_out[row] = flags;
}

// One thread per element (grid-stride). For MODE_SOFTMAX / MODE_LOG_SOFTMAX only x (the logits) and the
// M_S / LSEQ statistics are read (t and y are not); MODE_GRADIENT uses x = s, t, y and every statistic.
template <typename T>
__global__ void kd_elementwise(
    const T* __restrict__ x, const T* __restrict__ t, const long long* __restrict__ y,
    const T* __restrict__ stats, long long n_rows, long long vocab,
    T inv_t, T alpha, T soft_weight, long long ignore_index, const T* __restrict__ scale,
    int mode, T* __restrict__ out)
{
    const long long n = n_rows * vocab;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const long long row = i / vocab;
        const long long col = i - row * vocab;
        const T m_s = stats[STAT_M_S * n_rows + row];
        const T lseq = stats[STAT_LSEQ * n_rows + row];
        const T log_q = (x[i] - m_s) * inv_t - lseq;  // log softmax(x / T); -inf stays -inf
        if (mode == MODE_LOG_SOFTMAX) { out[i] = log_q; continue; }
        if (mode == MODE_SOFTMAX) { out[i] = ex(log_q); continue; }

        // MODE_GRADIENT
        const long long label = y[row];
        if (label == ignore_index) { out[i] = T(0); continue; }
        T g = T(0);
        if (alpha != T(0)) {
            const T q1 = ex((x[i] - m_s) - stats[STAT_LSE1 * n_rows + row]);
            g += alpha * (q1 - (col == label ? T(1) : T(0)));
        }
        if (soft_weight != T(0)) {
            const T p = ex((t[i] - stats[STAT_M_T * n_rows + row]) * inv_t - stats[STAT_LSEP * n_rows + row]);
            g += soft_weight * (ex(log_q) - p);
        }
        out[i] = g * scale[0];
    }
}
"""

NAME_EXPRESSIONS: tuple[str, ...] = (
    "kd_row_stats<float>",
    "kd_row_stats<double>",
    "kd_elementwise<float>",
    "kd_elementwise<double>",
)
"""The template instantiations compiled (``cupy.RawModule(name_expressions=...)``)."""
