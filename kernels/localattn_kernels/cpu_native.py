"""Optional fused C decode and prefill kernels for the CPU path, built on first use with the system C compiler.

Why: decode over W + S keys moves ~2 MB per layer; composed torch ops (gather, upcast, bmm, softmax, bmm) touch
those bytes ~8 times and pay per-op dispatch, which left the torch path several times slower than vLLM's own
fused sliding-window kernel. These kernels read each needed key/value once, straight from vLLM's CPU cache
("vec" layout: K^T per block), in fp32 accumulation, parallel with OpenMP (they link to the ``libgomp.so.1``
torch already loaded, so they share one thread pool). Decode: one task per (request, KV head). Prefill: one
task per (request, KV head, ``16 // G`` consecutive query positions), so each K^T / V load feeds up to 16 rows
(positions x the G query heads of the KV head) held in SIMD registers; without that grouping a prefill costs
as much as one decode per query.

No torch headers, so it builds in ~1 s; the ``.so`` is cached under ``$LOCALATTN_CACHE`` (default
``~/.cache/localattn``) keyed by source, compiler and CPU flags. Missing compiler or a failed build: the CPU
path silently keeps its torch implementation (``available()`` says which). ``LOCALATTN_NATIVE=0`` disables it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = ((uint32_t)x) << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
/* Cephes-style expf (max rel. error ~2e-7) that gcc vectorises; libm's expf is scalar and ~20 ns a call. */
static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t e = ((int32_t)n + 127) << 23;
    float scale; memcpy(&scale, &e, 4);
    return p * scale;
}
/* Load n elements (fp32 if is_bf16 == 0, else bf16) into fp32 dst. */
static inline void load_row(float *restrict dst, const void *restrict src, int64_t n, int is_bf16) {
    if (is_bf16) { const uint16_t *s = (const uint16_t *)src; for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]); }
    else memcpy(dst, src, (size_t)n * sizeof(float));
}

/* GCC vector extensions: explicit 16-lane SIMD that compiles to AVX-512, AVX2 pairs or NEON alike. */
typedef float v16f __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef uint32_t v16u __attribute__((vector_size(64)));
#define CH 16

static inline __attribute__((always_inline)) v16f load16(const char *p, const int is_bf16) {
    v16f f;
    if (is_bf16) { v16h h; memcpy(&h, p, 32); v16u u = __builtin_convertvector(h, v16u) << 16; memcpy(&f, &u, 64); }
    else memcpy(&f, p, 64);
    return f;
}

/* scores of the NV*16 tokens [c, c + NV*16) of one block (K^T [D][bs]) that fall in [t0, t1): NV*G
   independent FMA chains held in registers across the head dimension; each K^T row read is NV*64
   contiguous bytes. Lanes outside [t0, t1) still read inside the block (chunks are 16-aligned, bs % 32 == 0)
   and are just not stored. */
static inline __attribute__((always_inline)) void score_chunk(
    const int G, const int NV, const char *kb, int64_t bs, int64_t c, int64_t t0, int64_t t1,
    const float *restrict qf, int D, float *restrict sc, int64_t n, int64_t o, const int is_bf16)
{
    const int64_t esz = is_bf16 ? 2 : 4;
    v16f a[16][4];
    for (int g = 0; g < G; ++g) for (int v = 0; v < NV; ++v) a[g][v] = (v16f){0};
    for (int d = 0; d < D; ++d) {
        const char *row = kb + ((int64_t)d * bs + c) * esz;
        v16f k[4];
        for (int v = 0; v < NV; ++v) k[v] = load16(row + v * CH * esz, is_bf16);
        for (int g = 0; g < G; ++g) {
            const float qd = qf[g * D + d];
            for (int v = 0; v < NV; ++v) a[g][v] += qd * k[v];
        }
    }
    if (c >= t0 && c + NV * CH <= t1) {  /* whole chunk in range: plain vector stores */
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < NV; ++v) memcpy(sc + (int64_t)g * n + o + (c - t0) + v * CH, &a[g][v], 64);
        return;
    }
    for (int g = 0; g < G; ++g) {
        float lane[4 * CH];
        for (int v = 0; v < NV; ++v) memcpy(lane + v * CH, &a[g][v], 64);
        for (int i = 0; i < NV * CH; ++i) {
            const int64_t t = c + i;
            if (t >= t0 && t < t1) sc[(int64_t)g * n + o + (t - t0)] = lane[i];
        }
    }
}

#if defined(__AVX512BF16__)
#include <immintrin.h>
#define HAVE_DPBF16 1
/* bf16 caches on CPUs with AVX512-BF16: scores of the 16 tokens [c, c+16) of one block for G rows with
   vdpbf16ps (two head dims per instruction, exact bf16 products, fp32 sums), half the FMAs of score_chunk.
   K^T rows d and d+1 are interleaved into (k[d][t], k[d+1][t]) pairs; qp holds each row's query as the same
   pairs (its raw bf16, unscaled: the scale is applied to the sums). */
static inline __attribute__((always_inline)) void score_chunk_dp(
    const int G, const char *kb, int64_t bs, int64_t c, int64_t t0, int64_t t1, const uint32_t *restrict qp,
    int D, float scale, float *restrict sc, int64_t n, int64_t o)
{
    __m512 a[16];
    for (int g = 0; g < G; ++g) a[g] = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 2) {
        const char *row = kb + ((int64_t)d * bs + c) * 2;
        const __m512i k0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)row));
        const __m512i k1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + bs * 2)));
        const __m512bh kp = (__m512bh)_mm512_or_si512(k0, _mm512_slli_epi32(k1, 16));
        for (int g = 0; g < G; ++g)
            a[g] = _mm512_dpbf16_ps(a[g], kp, (__m512bh)_mm512_set1_epi32((int)qp[g * (D / 2) + d / 2]));
    }
    const __m512 vs = _mm512_set1_ps(scale);
    if (c >= t0 && c + CH <= t1) {
        for (int g = 0; g < G; ++g) _mm512_storeu_ps(sc + (int64_t)g * n + o + (c - t0), _mm512_mul_ps(a[g], vs));
        return;
    }
    for (int g = 0; g < G; ++g) {
        float lane[CH];
        _mm512_storeu_ps(lane, _mm512_mul_ps(a[g], vs));
        for (int i = 0; i < CH; ++i) {
            const int64_t t = c + i;
            if (t >= t0 && t < t1) sc[(int64_t)g * n + o + (t - t0)] = lane[i];
        }
    }
}
#else
#define HAVE_DPBF16 0
#endif

/* scores for tokens [t0, t1) of one block: wide chunks where they fit, 16-token chunks at the ragged edges
   (the few sink tokens, the window start), so little work is spent on lanes that are thrown away. */
static inline __attribute__((always_inline)) void score_block(
    const int G, const int NV, const char *kb, int64_t bs, int64_t t0, int64_t t1, const float *restrict qf, int D,
    float *restrict sc, int64_t n, int64_t o, const int is_bf16)
{
    for (int64_t c = t0 - t0 % CH; c < t1;) {
        if (NV > 1 && c % (NV * CH) == 0 && c + NV * CH <= t1) {
            score_chunk(G, NV, kb, bs, c, t0, t1, qf, D, sc, n, o, is_bf16);
            c += NV * CH;
        } else {
            score_chunk(G, 1, kb, bs, c, t0, t1, qf, D, sc, n, o, is_bf16);
            c += CH;
        }
    }
}

/* out_acc[g][:] += sum over tokens [t0, t1) of one block of p[g][t] * V[t][:], NV*16 dims at a time
   (NV*G accumulators in registers; fewer passes over the block's V rows when G is small). */
static inline __attribute__((always_inline)) void value_block(
    const int G, const int NV, const char *vb, int64_t t0, int64_t t1, int D, const float *restrict sc, int64_t n,
    int64_t o, float *restrict out_acc, const int is_bf16)
{
    const int64_t esz = is_bf16 ? 2 : 4;
    for (int d0 = 0; d0 < D; d0 += NV * CH) {
        v16f a[16][4];
        for (int g = 0; g < G; ++g) for (int v = 0; v < NV; ++v) memcpy(&a[g][v], out_acc + g * D + d0 + v * CH, 64);
        for (int64_t t = t0; t < t1; ++t) {
            v16f x[4];
            for (int v = 0; v < NV; ++v) x[v] = load16(vb + (t * D + d0 + v * CH) * esz, is_bf16);
            for (int g = 0; g < G; ++g) {
                const float p = sc[(int64_t)g * n + o + (t - t0)];
                for (int v = 0; v < NV; ++v) a[g][v] += p * x[v];
            }
        }
        for (int g = 0; g < G; ++g) for (int v = 0; v < NV; ++v) memcpy(out_acc + g * D + d0 + v * CH, &a[g][v], 64);
    }
}

/* Lane-wise max and expf on 16 lanes, written with vector extensions because gcc leaves the scalar loops of a
   row softmax unvectorised (it was ~4 ns an element, the whole cost of a prefill task). Same polynomial as
   fast_expf; floor = truncation minus one where that rounded up. */
typedef int32_t v16i __attribute__((vector_size(64)));
static inline __attribute__((always_inline)) v16f vmax16(v16f a, v16f b) {
    const v16i m = a > b;
    return (v16f)((m & (v16i)a) | (~m & (v16i)b));
}
static inline __attribute__((always_inline)) v16f fast_expf16(v16f x) {
    x = vmax16(x, (v16f){0} - 87.0f);
    const v16f y = x * 1.44269504088896341f + 0.5f;
    v16i n = __builtin_convertvector(y, v16i);
    n += (v16i)(__builtin_convertvector(n, v16f) > y);  /* true is -1 */
    const v16f nf = __builtin_convertvector(n, v16f);
    const v16f r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    v16f p = (v16f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (v16f)((n + 127) << 23);
}

/* In-place exp(s - max) of s[0:n] (16 lanes at a time, a scalar tail); returns 1 / sum, the normaliser. */
static float exp_row(float *restrict s, int64_t n) {
    v16f mv = (v16f){0} - INFINITY, sv = (v16f){0};
    int64_t t = 0;
    for (; t + CH <= n; t += CH) { v16f x; memcpy(&x, s + t, 64); mv = vmax16(x, mv); }
    float m = -INFINITY;
    for (int i = 0; i < CH; ++i) m = mv[i] > m ? mv[i] : m;
    for (int64_t u = t; u < n; ++u) m = s[u] > m ? s[u] : m;
    for (t = 0; t + CH <= n; t += CH) {
        v16f x; memcpy(&x, s + t, 64);
        x = fast_expf16(x - m);
        memcpy(s + t, &x, 64);
        sv += x;
    }
    float sum = 0.f;
    for (int i = 0; i < CH; ++i) sum += sv[i];
    for (int64_t u = t; u < n; ++u) { s[u] = fast_expf(s[u] - m); sum += s[u]; }
    return sum > 0.f ? 1.f / sum : 0.f;
}

/* Prefill: R = Q*G rows (Q consecutive query positions x the G query heads of one KV head) against the union of
   their key sets, sinks [0, min(S, last+1)) then window [max(first - W + 1, S), last]; each K^T / V load feeds
   all R rows. Row i*G+g is position first + min(i, nq-1) (tail tasks repeat their last position and do not
   store it). Per row, keys outside its own window (or after it) get probability exactly 0. */
static inline __attribute__((always_inline)) void prefill_task(
    const int R, const int NV, const int VNV, const int G, const char *q, int64_t q_st, int64_t q_sh,
    const char *kc, const char *vc, int64_t sb, int64_t sh, const int32_t *bt, int64_t first, int nq,
    int64_t q_row0, char *out, int64_t o_st, int64_t o_sh, int kvh, int D, int64_t bs, int window, int sinks,
    float scale, const int is_bf16)
{
    const int64_t esz = is_bf16 ? 2 : 4;
    const int64_t last = first + nq - 1, L = last + 1;
    const int64_t n_sink = sinks < L ? sinks : L;
    const int64_t win_lo = (first - window + 1) > sinks ? (first - window + 1) : sinks;
    const int64_t n = n_sink + (L > win_lo ? L - win_lo : 0);
    float *qf = (float *)malloc(sizeof(float) * R * D);
    float *sc = (float *)malloc(sizeof(float) * R * n);
    float *acc = (float *)calloc((size_t)R * D, sizeof(float));
    uint32_t *qp = (uint32_t *)malloc(sizeof(float) * R * D);
    float inv[16];
    for (int row = 0; row < R; ++row) {
        const int i = row / G < nq ? row / G : nq - 1, g = row % G;
        if (is_bf16) memcpy(qp + row * (D / 2), q + ((q_row0 + i) * q_st + (int64_t)(kvh * G + g) * q_sh) * esz, 2 * D);
        load_row(qf + row * D, q + ((q_row0 + i) * q_st + (int64_t)(kvh * G + g) * q_sh) * esz, D, is_bf16);
        for (int d = 0; d < D; ++d) qf[row * D + d] *= scale;
    }
    for (int pass = 0; pass < 2; ++pass) {
        for (int part = 0; part < 2; ++part) {
            const int64_t j0 = part == 0 ? 0 : win_lo, j1 = part == 0 ? n_sink : L;
            const int64_t base = part == 0 ? 0 : n_sink;
            for (int64_t j = j0; j < j1;) {
                const int64_t b = j / bs, t0 = j % bs;
                const int64_t t1 = (j1 - b * bs) < bs ? (j1 - b * bs) : bs;
                const int64_t off = ((int64_t)bt[b] * sb + (int64_t)kvh * sh) * esz;
#if HAVE_DPBF16
                if (pass == 0 && is_bf16)
                    for (int64_t cc = t0 - t0 % CH; cc < t1; cc += CH)
                        score_chunk_dp(R, kc + off, bs, cc, t0, t1, qp, D, scale, sc, n, base + (j - j0));
                else
#endif
                if (pass == 0) score_block(R, NV, kc + off, bs, t0, t1, qf, D, sc, n, base + (j - j0), is_bf16);
                else value_block(R, VNV, vc + off, t0, t1, D, sc, n, base + (j - j0), acc, is_bf16);
                j += t1 - t0;
            }
        }
        if (pass == 0) {
            for (int row = 0; row < R; ++row) {
                const int64_t p = first + (row / G < nq ? row / G : nq - 1);
                /* this row's keys: sink slots [0, a) and window slots [b, c) of the score row; others: exactly 0 */
                const int64_t a = n_sink < p + 1 ? n_sink : p + 1;
                const int64_t lo = (p - window + 1) > win_lo ? (p - window + 1) : win_lo;
                const int64_t b = n_sink + (lo - win_lo), c = n_sink + (p + 1 - win_lo);
                float *s = sc + (int64_t)row * n;
                for (int64_t t = a; t < n_sink; ++t) s[t] = -INFINITY;
                for (int64_t t = n_sink; t < b; ++t) s[t] = -INFINITY;
                for (int64_t t = c > b ? c : b; t < n; ++t) s[t] = -INFINITY;
                inv[row] = exp_row(s, n);  /* P.V is normalised at the store */
                for (int64_t t = a; t < n_sink; ++t) s[t] = 0.f;
                for (int64_t t = n_sink; t < b; ++t) s[t] = 0.f;
                for (int64_t t = c > b ? c : b; t < n; ++t) s[t] = 0.f;
            }
        }
    }
    for (int row = 0; row < R && row / G < nq; ++row) {
        const int i = row / G, g = row % G;
        char *dst = out + ((q_row0 + i) * o_st + (int64_t)(kvh * G + g) * o_sh) * esz;
        float *a = acc + row * D;
        for (int d = 0; d < D; ++d) a[d] *= inv[row];
        if (is_bf16) { uint16_t *o16 = (uint16_t *)dst; for (int d = 0; d < D; ++d) o16[d] = f32_to_bf16(a[d]); }
        else memcpy(dst, a, sizeof(float) * D);
    }
    free(qf); free(sc); free(acc); free(qp);
}

/* Decode: request r has one query (row q_rows[r]) at position seq_lens[r]-1 and reads keys
   [0, min(S, L)) and [max(L - W, S), L). key_cache/value_cache: element strides (sb, sh) of
   [num_blocks, H, ...]; inside a (block, head): K^T [D][bs], V [bs][D] (vLLM CPU "vec" layout).
   Needs block_size % 32 == 0, head_size % 32 == 0, group <= 16 (the caller checks). A decode task is a prefill
   task of one position (R = G rows); its register blocking is chosen per group here. */
void localattn_decode(
    const void *q, int64_t q_st, int64_t q_sh,
    const void *kc, const void *vc, int64_t sb, int64_t sh,
    const int32_t *block_table, int64_t bt_stride, const int32_t *seq_lens, const int32_t *q_rows,
    void *out, int64_t o_st, int64_t o_sh,
    int num_reqs, int num_heads, int num_kv_heads, int head_size, int block_size,
    int window, int sinks, float scale, int is_bf16, int num_threads)
{
    const int group = num_heads / num_kv_heads;
    const int tasks = num_reqs * num_kv_heads;
    #pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (int task = 0; task < tasks; ++task) {
        const int r = task / num_kv_heads, kvh = task % num_kv_heads;
        const int32_t *bt = block_table + (int64_t)r * bt_stride;
#define CALL(GG, NVV, VV, BF) prefill_task(GG, NVV, VV, GG, (const char *)q, q_st, q_sh, (const char *)kc, \
        (const char *)vc, sb, sh, bt, (int64_t)seq_lens[r] - 1, 1, q_rows[r], (char *)out, o_st, o_sh, kvh, \
        head_size, block_size, window, sinks, scale, BF)
#define WIDE(GG, BF) if (block_size % 64 == 0 && head_size % 64 == 0) { CALL(GG, 4, 4, BF); } \
        else { CALL(GG, 2, 2, BF); }
#define BY_GROUP(BF) switch (group) { \
            case 1: WIDE(1, BF); break; case 2: WIDE(2, BF); break; case 4: WIDE(4, BF); break; \
            case 8: CALL(8, 2, 2, BF); break; default: CALL(group, 1, 1, BF); break; }
        if (is_bf16) { BY_GROUP(1) } else { BY_GROUP(0) }
#undef BY_GROUP
#undef WIDE
#undef CALL
    }
}

/* Prefill / chunked prefill: request r's q_lens[r] query rows start at row q_starts[r] of q and are the last
   positions of its seq_lens[r] tokens. Tasks = (request, KV head, group of rows_per_task positions), parallel
   with OpenMP. Same layout and limits as localattn_decode; rows_per_task * group <= 16. */
void localattn_prefill(
    const void *q, int64_t q_st, int64_t q_sh,
    const void *kc, const void *vc, int64_t sb, int64_t sh,
    const int32_t *block_table, int64_t bt_stride, const int32_t *seq_lens, const int32_t *q_starts,
    const int32_t *q_lens, void *out, int64_t o_st, int64_t o_sh,
    int num_reqs, int num_heads, int num_kv_heads, int head_size, int block_size,
    int window, int sinks, float scale, int is_bf16, int num_threads, int rows_per_task)
{
    const int group = num_heads / num_kv_heads, Q = rows_per_task, rows = Q * group;
    int64_t *task0 = (int64_t *)malloc(sizeof(int64_t) * (num_reqs + 1));
    task0[0] = 0;
    for (int r = 0; r < num_reqs; ++r) task0[r + 1] = task0[r] + (int64_t)((q_lens[r] + Q - 1) / Q) * num_kv_heads;
    const int64_t tasks = task0[num_reqs];
    #pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
        int r = 0;
        while (task0[r + 1] <= task) ++r;
        const int64_t local = task - task0[r];
        const int kvh = (int)(local % num_kv_heads);
        const int64_t qi = (local / num_kv_heads) * Q;
        const int nq = (q_lens[r] - qi) < Q ? (int)(q_lens[r] - qi) : Q;
        const int64_t first = (int64_t)seq_lens[r] - q_lens[r] + qi;
        const int32_t *bt = block_table + (int64_t)r * bt_stride;
#define CALL(RR, NVV, VV, GG, BF) prefill_task(RR, NVV, VV, GG, (const char *)q, q_st, q_sh, (const char *)kc, \
        (const char *)vc, sb, sh, bt, first, nq, q_starts[r] + qi, (char *)out, o_st, o_sh, kvh, head_size, \
        block_size, window, sinks, scale, BF)
#define BY_ROWS(BF) switch (rows) { \
            case 16: CALL(16, 1, 1, group, BF); break; \
            case 8: CALL(8, 2, 2, group, BF); break; \
            case 4: if (block_size % 64 == 0 && head_size % 64 == 0) { CALL(4, 4, 4, group, BF); } \
                    else { CALL(4, 2, 2, group, BF); } break; \
            default: CALL(rows, 1, 1, group, BF); break; }
        if (is_bf16) { BY_ROWS(1) } else { BY_ROWS(0) }
#undef BY_ROWS
#undef CALL
    }
    free(task0);
}
"""

FLAGS = [
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-fno-math-errno",
]


def _cache_dir() -> Path:
    return Path(os.environ.get("LOCALATTN_CACHE", Path.home() / ".cache" / "localattn")) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("LOCALATTN_NATIVE", "1") == "0":
        return None
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
        key = hashlib.sha256(
            "\0".join([SOURCE, " ".join(FLAGS), version, _cpu_flags()]).encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"localattn_native-{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "native.c"
                src.write_text(SOURCE)
                built = Path(tmp) / "native.so"
                subprocess.run(
                    [cc, *FLAGS, str(src), "-o", str(built), "-lm"], capture_output=True, check=True
                )
                staged = target.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(built, staged)
                os.replace(staged, target)  # atomic: concurrent builders (vLLM workers) never see half a file
        lib = ctypes.CDLL(str(target))
        decode_fn, prefill_fn = lib.localattn_decode, lib.localattn_prefill
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return None
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    decode_fn.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, ptr, i64, ptr, ptr, ptr, i64, i64]
    decode_fn.argtypes += [i32] * 7 + [ctypes.c_float, i32, i32]
    decode_fn.restype = None
    prefill_fn.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, i64, i64]
    prefill_fn.argtypes += [i32] * 7 + [ctypes.c_float, i32, i32, i32]
    prefill_fn.restype = None
    return lib


def available() -> bool:
    """Whether the fused decode and prefill kernels are built and loadable here."""
    return _library() is not None


def supports(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, isa: str) -> bool:
    """Whether :func:`decode` and :func:`prefill` handle this call (else the CPU path uses its torch code)."""
    return (
        isa in ("vec", "vec16")
        and query.dtype in (torch.float32, torch.bfloat16)
        and query.stride(-1) == 1
        and key_cache.stride(2) == key_cache.shape[3]
        and key_cache.stride(3) == 1
        and key_cache.stride() == value_cache.stride()
        and key_cache.shape[2] % 32 == 0
        and key_cache.shape[3] % 32 == 0
        and query.shape[1] // key_cache.shape[1] <= 16
        and available()
    )


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous()


def _i32_table(block_table: torch.Tensor) -> torch.Tensor:
    """The block table as the kernels read it: int32 rows with unit inner stride; any row stride (a row
    expanded with stride 0, a slice of rows) is passed through as is."""
    if block_table.dtype == torch.int32 and block_table.stride(1) == 1:
        return block_table
    return _i32(block_table)


def decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    out: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    q_rows: torch.Tensor,
    *,
    window: int,
    sinks: int,
    scale: float,
) -> None:
    """Decode rows ``q_rows[:R]`` (one per request, ``R = len(seq_lens)``) of ``query`` into the same rows of
    ``out`` (``[T, Hq, D]``); ``block_table`` rows ``0..R-1`` belong to those requests."""
    lib = _library()
    assert lib is not None
    bt = _i32_table(block_table)
    sl, rows = _i32(seq_lens), _i32(q_rows)
    _, hq, d = query.shape
    lib.localattn_decode(
        query.data_ptr(), query.stride(0), query.stride(1),
        key_cache.data_ptr(), value_cache.data_ptr(), key_cache.stride(0), key_cache.stride(1),
        bt.data_ptr(), bt.stride(0), sl.data_ptr(), rows.data_ptr(),
        out.data_ptr(), out.stride(0), out.stride(1),
        sl.shape[0], hq, key_cache.shape[1], d, key_cache.shape[2],
        window, sinks, scale, int(query.dtype == torch.bfloat16), torch.get_num_threads(),
    )  # fmt: skip


#: Rows a prefill task scores at once (query positions x GQA group): the register block of one K^T / V load.
PREFILL_ROWS = 16


def prefill_positions_per_task(group: int) -> int:
    """Query positions per prefill task: as many as fill :data:`PREFILL_ROWS` rows with ``group`` heads each."""
    return max(1, PREFILL_ROWS // group)


def prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    out: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    q_starts: torch.Tensor,
    q_lens: torch.Tensor,
    *,
    window: int,
    sinks: int,
    scale: float,
    positions_per_task: int | None = None,
) -> None:
    """Prefill rows: request ``r`` (``R = len(seq_lens)``) owns rows ``q_starts[r] : q_starts[r] + q_lens[r]`` of
    ``query`` / ``out`` (``[T, Hq, D]``), the last ``q_lens[r]`` positions of its ``seq_lens[r]`` tokens;
    ``block_table`` rows ``0..R-1`` belong to those requests. Same conditions as :func:`supports`."""
    lib = _library()
    assert lib is not None
    _, hq, d = query.shape
    group = hq // key_cache.shape[1]
    per_task = positions_per_task or prefill_positions_per_task(group)
    if not 1 <= per_task * group <= PREFILL_ROWS:
        raise ValueError(
            f"positions_per_task * group must be in [1, {PREFILL_ROWS}], got {per_task} * {group}"
        )
    bt = _i32_table(block_table)
    sl, st, ql = _i32(seq_lens), _i32(q_starts), _i32(q_lens)
    lib.localattn_prefill(
        query.data_ptr(), query.stride(0), query.stride(1),
        key_cache.data_ptr(), value_cache.data_ptr(), key_cache.stride(0), key_cache.stride(1),
        bt.data_ptr(), bt.stride(0), sl.data_ptr(), st.data_ptr(), ql.data_ptr(),
        out.data_ptr(), out.stride(0), out.stride(1),
        sl.shape[0], hq, key_cache.shape[1], d, key_cache.shape[2],
        window, sinks, scale, int(query.dtype == torch.bfloat16), torch.get_num_threads(), per_task,
    )  # fmt: skip
