#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-quants.h"
#include "quants.h"
#include "hifi.h"

#include "arch-fallback.h"

#include <assert.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

// HIFI vec_dot against Q8_K, one 256-weight block at a time:
//
//   dot(x, y) = sum_i [ dot(x[i].base, y[i]) + y[i].d * sum_s res[s] * y[i].qs[idx[s]] ]
//
// The base part is the base type's own kernel called on one block, so it is as fast as
// the base type on every architecture that has a SIMD version of it; the correction is
// 8 multiply-adds per block. Unused slots have res == 0 and add nothing.

static inline float hifi_correction(const ggml_half * GGML_RESTRICT res, const uint8_t * GGML_RESTRICT idx,
        const block_q8_K * GGML_RESTRICT y) {
    float sum = 0.0f;
    for (int s = 0; s < HIFI_OUTLIERS; ++s) {
        sum += GGML_CPU_FP16_TO_FP32(res[s]) * (float) y->qs[idx[s]];
    }
    return sum * y->d;
}

#define HIFI_VEC_DOT(bt, name, base_dot) \
    void name(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) { \
        assert(n % QK_K == 0); \
        assert(nrc == 1); \
        GGML_UNUSED(nrc); \
        GGML_UNUSED(bx); \
        GGML_UNUSED(by); \
        GGML_UNUSED(bs); \
        const block_##bt##_hifi * GGML_RESTRICT x = vx; \
        const block_q8_K        * GGML_RESTRICT y = vy; \
        const int nb = n / QK_K; \
        float sumf = 0.0f; \
        for (int i = 0; i < nb; ++i) { \
            float sb; \
            base_dot(QK_K, &sb, 0, &x[i].base, 0, &y[i], 0, 1); \
            sumf += sb + hifi_correction(x[i].res, x[i].idx, &y[i]); \
        } \
        *s = sumf; \
    }

HIFI_VEC_DOT(q3_K, ggml_vec_dot_q3_K_hifi_q8_K_generic, ggml_vec_dot_q3_K_q8_K_generic)
HIFI_VEC_DOT(q4_K, ggml_vec_dot_q4_K_hifi_q8_K_generic, ggml_vec_dot_q4_K_q8_K_generic)
HIFI_VEC_DOT(q5_K, ggml_vec_dot_q5_K_hifi_q8_K_generic, ggml_vec_dot_q5_K_q8_K_generic)
HIFI_VEC_DOT(q6_K, ggml_vec_dot_q6_K_hifi_q8_K_generic, ggml_vec_dot_q6_K_q8_K_generic)

#if defined(__AVX2__) && defined(__F16C__)

// AVX2: the base type's AVX2 loop (arch/x86/quants.c) run over the HIFI stride, plus the
// outlier correction: the 8 residuals are converted with one vcvtph2ps, the 8 activations
// y.qs[idx[s]] are read with scalar loads and widened with one vpmovsxbd, and the products
// go to their own accumulator (calling the base kernel once per block ran at 0.45x the base,
// vpgatherdd at 0.6x, AVX512-VBMI vpermt2b lookups slower than scalar loads).

#define MM256_SET_M128I(a, b) _mm256_insertf128_si256(_mm256_castsi128_si256(b), (a), 1)

static inline float hifi_hsum_float_8(const __m256 x) {
    __m128 res = _mm256_extractf128_ps(x, 1);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    return _mm_cvtss_f32(res);
}

// lane s: res[s] * y.qs[idx[s]]
static inline __m256 hifi_correction_avx2(const ggml_half * GGML_RESTRICT res, const uint8_t * GGML_RESTRICT idx,
        const block_q8_K * GGML_RESTRICT y) {
    const __m256  r  = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) res));
    // the 8 bytes y.qs[idx[s]] gathered with scalar loads
    int8_t t[HIFI_OUTLIERS];
    for (int k = 0; k < HIFI_OUTLIERS; ++k) {
        t[k] = y->qs[idx[k]];
    }
    const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) t));
    return _mm256_mul_ps(r, _mm256_cvtepi32_ps(q));
}

// byte pairs selecting 16-bit scale i, for _mm256_shuffle_epi8 (as get_scale_shuffle_* in arch/x86/quants.c)
static inline __m256i hifi_scale_shuffle_k4(int i) {
    return _mm256_set1_epi16((int16_t)((2*i) | ((2*i + 1) << 8)));
}

static inline __m256i hifi_scale_shuffle_q3k(int i) {
    const __m128i lo = _mm_set1_epi16((int16_t)((4*i + 0) | ((4*i + 1) << 8)));
    const __m128i hi = _mm_set1_epi16((int16_t)((4*i + 2) | ((4*i + 3) << 8)));
    return MM256_SET_M128I(hi, lo);
}

static inline __m128i hifi_scale_shuffle(int i) {
    return _mm_set_epi8(2*i + 1, 2*i + 1, 2*i + 1, 2*i + 1, 2*i + 1, 2*i + 1, 2*i + 1, 2*i + 1,
                        2*i,     2*i,     2*i,     2*i,     2*i,     2*i,     2*i,     2*i);
}

void ggml_vec_dot_q3_K_hifi_q8_K(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_K == 0);
    assert(nrc == 1);
    GGML_UNUSED(nrc);
    GGML_UNUSED(bx);
    GGML_UNUSED(by);
    GGML_UNUSED(bs);

    const uint32_t kmask1 = 0x03030303;
    const uint32_t kmask2 = 0x0f0f0f0f;

    const block_q3_K_hifi * GGML_RESTRICT x = vx;
    const block_q8_K      * GGML_RESTRICT y = vy;

    const int nb = n / QK_K;

    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i mone = _mm256_set1_epi8(1);
    const __m128i m32 = _mm_set1_epi8(32);

    __m256 acc   = _mm256_setzero_ps();
    __m256 acc_r = _mm256_setzero_ps();

    uint32_t aux[3];

    for (int i = 0; i < nb; ++i) {
        const block_q3_K * GGML_RESTRICT xb = &x[i].base;

        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(xb->d);

        const uint8_t * GGML_RESTRICT q3 = xb->qs;
        const int8_t  * GGML_RESTRICT q8 = y[i].qs;

        memcpy(aux, xb->scales, 12);
        __m128i scales128 = _mm_set_epi32(
                ((aux[1] >> 4) & kmask2) | (((aux[2] >> 6) & kmask1) << 4),
                ((aux[0] >> 4) & kmask2) | (((aux[2] >> 4) & kmask1) << 4),
                (aux[1] & kmask2) | (((aux[2] >> 2) & kmask1) << 4),
                (aux[0] & kmask2) | (((aux[2] >> 0) & kmask1) << 4));
        scales128 = _mm_sub_epi8(scales128, m32);
        const __m256i all_scales = _mm256_cvtepi8_epi16(scales128);
        const __m128i l_scales = _mm256_extracti128_si256(all_scales, 0);
        const __m128i h_scales = _mm256_extracti128_si256(all_scales, 1);
        const __m256i scales[2] = {MM256_SET_M128I(l_scales, l_scales), MM256_SET_M128I(h_scales, h_scales)};

        const __m256i hbits = _mm256_loadu_si256((const __m256i*)xb->hmask);

        __m256i sumi = _mm256_setzero_si256();

        int bit = 0;
        int is  = 0;

        for (int j = 0; j < QK_K/128; ++j) {
            const __m256i q3bits = _mm256_loadu_si256((const __m256i*)q3); q3 += 32;

            const __m256i q3l_0 = _mm256_and_si256(q3bits, m3);
            const __m256i q3h_0 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, bit)), bit), 2);
            ++bit;

            const __m256i q3l_1 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 2), m3);
            const __m256i q3h_1 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, bit)), bit), 2);
            ++bit;

            const __m256i q3l_2 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 4), m3);
            const __m256i q3h_2 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, bit)), bit), 2);
            ++bit;

            const __m256i q3l_3 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 6), m3);
            const __m256i q3h_3 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, bit)), bit), 2);
            ++bit;

            const __m256i q8_0 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            const __m256i q8_1 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            const __m256i q8_2 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            const __m256i q8_3 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;

            __m256i q8s_0 = _mm256_maddubs_epi16(q3h_0, q8_0);
            __m256i q8s_1 = _mm256_maddubs_epi16(q3h_1, q8_1);
            __m256i q8s_2 = _mm256_maddubs_epi16(q3h_2, q8_2);
            __m256i q8s_3 = _mm256_maddubs_epi16(q3h_3, q8_3);

            __m256i p16_0 = _mm256_maddubs_epi16(q3l_0, q8_0);
            __m256i p16_1 = _mm256_maddubs_epi16(q3l_1, q8_1);
            __m256i p16_2 = _mm256_maddubs_epi16(q3l_2, q8_2);
            __m256i p16_3 = _mm256_maddubs_epi16(q3l_3, q8_3);

            p16_0 = _mm256_sub_epi16(p16_0, q8s_0);
            p16_1 = _mm256_sub_epi16(p16_1, q8s_1);
            p16_2 = _mm256_sub_epi16(p16_2, q8s_2);
            p16_3 = _mm256_sub_epi16(p16_3, q8s_3);

            p16_0 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], hifi_scale_shuffle_q3k(is + 0)), p16_0);
            p16_1 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], hifi_scale_shuffle_q3k(is + 1)), p16_1);
            p16_2 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], hifi_scale_shuffle_q3k(is + 2)), p16_2);
            p16_3 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], hifi_scale_shuffle_q3k(is + 3)), p16_3);

            p16_0 = _mm256_add_epi32(p16_0, p16_1);
            p16_2 = _mm256_add_epi32(p16_2, p16_3);
            sumi  = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_2));
        }

        acc   = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        acc_r = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d), hifi_correction_avx2(x[i].res, x[i].idx, &y[i]), acc_r);
    }

    *s = hifi_hsum_float_8(_mm256_add_ps(acc, acc_r));
}

void ggml_vec_dot_q4_K_hifi_q8_K(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_K == 0);
    assert(nrc == 1);
    GGML_UNUSED(nrc);
    GGML_UNUSED(bx);
    GGML_UNUSED(by);
    GGML_UNUSED(bs);

    const block_q4_K_hifi * GGML_RESTRICT x = vx;
    const block_q8_K      * GGML_RESTRICT y = vy;

    const int nb = n / QK_K;

    static const uint32_t kmask1 = 0x3f3f3f3f;
    static const uint32_t kmask2 = 0x0f0f0f0f;
    static const uint32_t kmask3 = 0x03030303;

    uint32_t utmp[4];

    const __m256i m4 = _mm256_set1_epi8(0xF);

    __m256 acc   = _mm256_setzero_ps();
    __m256 acc_r = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        const block_q4_K * GGML_RESTRICT xb = &x[i].base;

        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(xb->d);
        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(xb->dmin);

        memcpy(utmp, xb->scales, 12);
        utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
        const uint32_t uaux = utmp[1] & kmask1;
        utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
        utmp[2] = uaux;
        utmp[0] &= kmask1;

        const uint8_t * GGML_RESTRICT q4 = xb->qs;
        const int8_t  * GGML_RESTRICT q8 = y[i].qs;

        const __m256i mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(utmp[3], utmp[2], utmp[1], utmp[0]));

        const __m256i q8sums = _mm256_loadu_si256((const __m256i*)y[i].bsums);
        const __m128i q8s = _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);

        const __m128i sc128  = _mm256_extracti128_si256(mins_and_scales, 0);
        const __m256i scales = MM256_SET_M128I(sc128, sc128);

        __m256i sumi = _mm256_setzero_si256();

        for (int j = 0; j < QK_K/64; ++j) {
            const __m256i scale_l = _mm256_shuffle_epi8(scales, hifi_scale_shuffle_k4(2*j+0));
            const __m256i scale_h = _mm256_shuffle_epi8(scales, hifi_scale_shuffle_k4(2*j+1));

            const __m256i q4bits = _mm256_loadu_si256((const __m256i*)q4); q4 += 32;
            const __m256i q4l = _mm256_and_si256(q4bits, m4);
            const __m256i q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);

            const __m256i q8l = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            __m256i p16l = _mm256_maddubs_epi16(q4l, q8l);
            p16l = _mm256_madd_epi16(scale_l, p16l);

            const __m256i q8h = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            __m256i p16h = _mm256_maddubs_epi16(q4h, q8h);
            p16h = _mm256_madd_epi16(scale_h, p16h);
            const __m256i sumj = _mm256_add_epi32(p16l, p16h);

            sumi = _mm256_add_epi32(sumi, sumj);
        }

        acc   = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc_r = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d), hifi_correction_avx2(x[i].res, x[i].idx, &y[i]), acc_r);
    }

    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));

    *s = hifi_hsum_float_8(_mm256_add_ps(acc, acc_r)) + _mm_cvtss_f32(acc_m);
}

void ggml_vec_dot_q5_K_hifi_q8_K(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_K == 0);
    assert(nrc == 1);
    GGML_UNUSED(nrc);
    GGML_UNUSED(bx);
    GGML_UNUSED(by);
    GGML_UNUSED(bs);

    const block_q5_K_hifi * GGML_RESTRICT x = vx;
    const block_q8_K      * GGML_RESTRICT y = vy;

    const int nb = n / QK_K;

    static const uint32_t kmask1 = 0x3f3f3f3f;
    static const uint32_t kmask2 = 0x0f0f0f0f;
    static const uint32_t kmask3 = 0x03030303;

    uint32_t utmp[4];

    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m128i mzero = _mm_setzero_si128();
    const __m256i mone  = _mm256_set1_epi8(1);

    __m256 acc   = _mm256_setzero_ps();
    __m256 acc_r = _mm256_setzero_ps();

    float summs = 0.f;

    for (int i = 0; i < nb; ++i) {
        const block_q5_K * GGML_RESTRICT xb = &x[i].base;

        const uint8_t * GGML_RESTRICT q5 = xb->qs;
        const int8_t  * GGML_RESTRICT q8 = y[i].qs;

        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(xb->d);
        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(xb->dmin);

        memcpy(utmp, xb->scales, 12);
        utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
        const uint32_t uaux = utmp[1] & kmask1;
        utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
        utmp[2] = uaux;
        utmp[0] &= kmask1;

        const __m256i mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(utmp[3], utmp[2], utmp[1], utmp[0]));

        const __m256i q8sums = _mm256_loadu_si256((const __m256i*)y[i].bsums);
        const __m128i q8s = _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
        const __m128i hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);
        summs += dmin * _mm_extract_epi32(hsum, 0);

        const __m128i sc128  = _mm256_extracti128_si256(mins_and_scales, 0);
        const __m256i scales = MM256_SET_M128I(sc128, sc128);

        const __m256i hbits = _mm256_loadu_si256((const __m256i*)xb->qh);
        __m256i hmask = mone;

        __m256i sumi = _mm256_setzero_si256();

        int bit = 0;

        for (int j = 0; j < QK_K/64; ++j) {
            const __m256i scale_0 = _mm256_shuffle_epi8(scales, hifi_scale_shuffle_k4(2*j+0));
            const __m256i scale_1 = _mm256_shuffle_epi8(scales, hifi_scale_shuffle_k4(2*j+1));

            const __m256i q5bits = _mm256_loadu_si256((const __m256i*)q5); q5 += 32;

            const __m256i q5l_0 = _mm256_and_si256(q5bits, m4);
            const __m256i q5h_0 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(hbits, hmask), bit++), 4);
            const __m256i q5_0  = _mm256_add_epi8(q5l_0, q5h_0);
            hmask = _mm256_slli_epi16(hmask, 1);

            const __m256i q5l_1 = _mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4);
            const __m256i q5h_1 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(hbits, hmask), bit++), 4);
            const __m256i q5_1  = _mm256_add_epi8(q5l_1, q5h_1);
            hmask = _mm256_slli_epi16(hmask, 1);

            const __m256i q8_0 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            const __m256i q8_1 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;

            __m256i p16_0 = _mm256_maddubs_epi16(q5_0, q8_0);
            __m256i p16_1 = _mm256_maddubs_epi16(q5_1, q8_1);

            p16_0 = _mm256_madd_epi16(scale_0, p16_0);
            p16_1 = _mm256_madd_epi16(scale_1, p16_1);

            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
        }

        acc   = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc_r = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d), hifi_correction_avx2(x[i].res, x[i].idx, &y[i]), acc_r);
    }

    *s = hifi_hsum_float_8(_mm256_add_ps(acc, acc_r)) + summs;
}

void ggml_vec_dot_q6_K_hifi_q8_K(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_K == 0);
    assert(nrc == 1);
    GGML_UNUSED(nrc);
    GGML_UNUSED(bx);
    GGML_UNUSED(by);
    GGML_UNUSED(bs);

    const block_q6_K_hifi * GGML_RESTRICT x = vx;
    const block_q8_K      * GGML_RESTRICT y = vy;

    const int nb = n / QK_K;

    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i m15 = _mm256_set1_epi8(15);

    __m256 acc   = _mm256_setzero_ps();
    __m256 acc_r = _mm256_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        const block_q6_K * GGML_RESTRICT xb = &x[i].base;

        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(xb->d);

        const uint8_t * GGML_RESTRICT q4 = xb->ql;
        const uint8_t * GGML_RESTRICT qh = xb->qh;
        const int8_t  * GGML_RESTRICT q8 = y[i].qs;

        const __m256i q8sums = _mm256_loadu_si256((const __m256i*)y[i].bsums);
        const __m128i scales = _mm_loadu_si128((const __m128i*)xb->scales);
        const __m256i scales_16 = _mm256_cvtepi8_epi16(scales);
        const __m256i q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales_16), 5);

        __m256i sumi = _mm256_setzero_si256();

        int is = 0;

        for (int j = 0; j < QK_K/128; ++j) {
            const __m256i q4bits1 = _mm256_loadu_si256((const __m256i*)q4); q4 += 32;
            const __m256i q4bits2 = _mm256_loadu_si256((const __m256i*)q4); q4 += 32;
            const __m256i q4bitsH = _mm256_loadu_si256((const __m256i*)qh); qh += 32;

            const __m256i q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bitsH, m3), 4);
            const __m256i q4h_1 = _mm256_slli_epi16(_mm256_and_si256(q4bitsH, _mm256_set1_epi8(12)), 2);
            const __m256i q4h_2 = _mm256_and_si256(q4bitsH, _mm256_set1_epi8(48));
            const __m256i q4h_3 = _mm256_srli_epi16(_mm256_and_si256(q4bitsH, _mm256_set1_epi8(-64)), 2);

            const __m256i q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0);
            const __m256i q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1);
            const __m256i q4_2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), q4h_2);
            const __m256i q4_3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), q4h_3);

            const __m256i q8_0 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            const __m256i q8_1 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            const __m256i q8_2 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;
            const __m256i q8_3 = _mm256_loadu_si256((const __m256i*)q8); q8 += 32;

            __m256i p16_0 = _mm256_maddubs_epi16(q4_0, q8_0);
            __m256i p16_1 = _mm256_maddubs_epi16(q4_1, q8_1);
            __m256i p16_2 = _mm256_maddubs_epi16(q4_2, q8_2);
            __m256i p16_3 = _mm256_maddubs_epi16(q4_3, q8_3);

            const __m128i scale_0 = _mm_shuffle_epi8(scales, hifi_scale_shuffle(is + 0));
            const __m128i scale_1 = _mm_shuffle_epi8(scales, hifi_scale_shuffle(is + 1));
            const __m128i scale_2 = _mm_shuffle_epi8(scales, hifi_scale_shuffle(is + 2));
            const __m128i scale_3 = _mm_shuffle_epi8(scales, hifi_scale_shuffle(is + 3));
            is += 4;

            p16_0 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_0), p16_0);
            p16_1 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_1), p16_1);
            p16_2 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_2), p16_2);
            p16_3 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_3), p16_3);

            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_2, p16_3));
        }

        sumi  = _mm256_sub_epi32(sumi, q8sclsub);
        acc   = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        acc_r = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d), hifi_correction_avx2(x[i].res, x[i].idx, &y[i]), acc_r);
    }

    *s = hifi_hsum_float_8(_mm256_add_ps(acc, acc_r));
}

#else

// other architectures: the base type's own (SIMD where it has one) kernel, one block at a time
HIFI_VEC_DOT(q3_K, ggml_vec_dot_q3_K_hifi_q8_K, ggml_vec_dot_q3_K_q8_K)
HIFI_VEC_DOT(q4_K, ggml_vec_dot_q4_K_hifi_q8_K, ggml_vec_dot_q4_K_q8_K)
HIFI_VEC_DOT(q5_K, ggml_vec_dot_q5_K_hifi_q8_K, ggml_vec_dot_q5_K_q8_K)
HIFI_VEC_DOT(q6_K, ggml_vec_dot_q6_K_hifi_q8_K, ggml_vec_dot_q6_K_q8_K)

#endif

void quantize_row_q3_K_hifi(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_q3_K_hifi_ref(x, y, k);
}

void quantize_row_q4_K_hifi(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_q4_K_hifi_ref(x, y, k);
}

void quantize_row_q5_K_hifi(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_q5_K_hifi_ref(x, y, k);
}

void quantize_row_q6_K_hifi(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_q6_K_hifi_ref(x, y, k);
}
