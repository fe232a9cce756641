#include "ggml-hifi.h"
#include "ggml-quants.h"
#include "ggml-impl.h"

#include <math.h>
#include <string.h>
#include <assert.h>
#include <stddef.h>

// HIFI block (ggml-common.h), e.g. q4_K_hifi, 168 bytes per 256 weights:
//
//   +------------------------+------------------------+------------------+
//   | block_q4_K base (144)  | ggml_half res[8] (16)  | uint8_t idx[8]   |
//   +------------------------+------------------------+------------------+
//
//   w[j] = dequant(base)[j]                     for every j in [0, 256)
//   w[idx[s]] += fp16_to_fp32(res[s])           for s = 0..7, in slot order
//
// A slot with res == 0 adds nothing (unused slots are written as res = 0, idx = 0).
// Equal indices are legal: their residuals add. idx is 8 bits, so it always
// points inside its own block.
//
// Quantization of one block:
//   1. importance of each weight: the weight the base quantizers give it, with the
//      imatrix qw when there is one (qw * sqrt(sigma2 + x^2)), without it the
//      reference's (x^2 for q3_K/q6_K, rms(sub-block) + |x| for q4_K/q5_K)
//   2. the HIFI_OUTLIERS weights with the largest importance * x^2 become outliers
//   3. the base block is fitted without them: their value is replaced by 0 and,
//      with an imatrix, their weight is set to 0, so they neither widen the
//      scale/min ranges nor pull the scale search
//   4. res = fp16(x - dequant(base)) at each outlier; slots sorted by index
//   5. the same is done for the unmodified base fit (outliers restored afterwards);
//      the candidate with the smaller error sum w*(x - w_hifi)^2 (w = imatrix or 1)
//      is kept, so a HIFI block is never worse than its base block

#define HIFI_FP16_MAX 65504.0f

// importance of a weight, without / with an imatrix qw: the reference quantizers' weighting,
// and the imatrix weighting of quantize_row_q3_K/q4_K/q5_K_impl (q6_K_impl uses qw alone;
// qw * sqrt(sigma2 + x^2) is used for q6_K_hifi too, it picked outliers with a smaller error)
enum hifi_importance {
    HIFI_IMPORTANCE_X2,     // x^2                  / qw * sqrt(sigma2 + x^2)   (q3_K, q6_K)
    HIFI_IMPORTANCE_RMS_AX, // rms(32 values) + |x| / qw * sqrt(sigma2 + x^2)   (q4_K, q5_K)
};

// the base type, seen one 256-weight block at a time
struct hifi_base {
    void (*quantize_ref)(const float * GGML_RESTRICT x, void * GGML_RESTRICT y);
    void (*quantize_imp)(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, const float * GGML_RESTRICT qw);
    void (*dequantize)  (const void * GGML_RESTRICT x, float * GGML_RESTRICT y);
    enum hifi_importance importance;
    size_t base_size;   // sizeof(block_qX_K)
    size_t block_size;  // sizeof(block_qX_K_hifi)
    size_t res_offset;  // offsetof(block_qX_K_hifi, res)
    size_t idx_offset;  // offsetof(block_qX_K_hifi, idx)
};

static void hifi_importance(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
        enum hifi_importance kind, float * GGML_RESTRICT imp) {
    if (qw) {
        float sum_x2 = 0;
        for (int j = 0; j < QK_K; ++j) sum_x2 += x[j]*x[j];
        const float sigma2 = 2*sum_x2/QK_K;
        for (int j = 0; j < QK_K; ++j) imp[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j]);
        return;
    }
    switch (kind) {
        case HIFI_IMPORTANCE_X2:
            for (int j = 0; j < QK_K; ++j) imp[j] = x[j]*x[j];
            break;
        case HIFI_IMPORTANCE_RMS_AX:
            for (int ib = 0; ib < QK_K/32; ++ib) {
                float sum_x2 = 0;
                for (int l = 0; l < 32; ++l) sum_x2 += x[32*ib + l]*x[32*ib + l];
                const float av_x = sqrtf(sum_x2/32);
                for (int l = 0; l < 32; ++l) imp[32*ib + l] = av_x + fabsf(x[32*ib + l]);
            }
            break;
    }
}

// Picks up to HIFI_OUTLIERS positions with the largest importance * x^2, in increasing
// index order; returns how many (positions with a zero score are never picked).
//
// Why importance * x^2: the error of the output y = sum_j w_j a_j caused by the
// quantization of w_j is weighted by E[a_j^2] (the imatrix), and the weights with the
// largest |x| are those that set the block's scale and min, so removing them shrinks
// the quantization step for all other weights. importance * x^2 is the expected
// squared contribution of w_j to the output, i.e. the weights that matter most and
// cost the most range are taken out first. Ties go to the lowest index.
//
// A non-finite weight always takes a slot (the first HIFI_OUTLIERS of them): it is kept out of
// the base fit and its residual stays non-finite, so ggml_validate_row_data rejects the block,
// as it rejects a K-quant block whose scales such a weight made non-finite.
static int hifi_select_outliers(const float * GGML_RESTRICT x, const float * GGML_RESTRICT imp, uint8_t * GGML_RESTRICT sel) {
    float best[HIFI_OUTLIERS];
    int n = 0;
    for (int j = 0; j < QK_K && n < HIFI_OUTLIERS; ++j) {
        if (!isfinite(x[j])) {
            best[n] = INFINITY;
            sel[n++] = (uint8_t) j;
        }
    }
    for (int j = 0; j < QK_K; ++j) {
        if (!isfinite(x[j])) {
            continue;
        }
        const float score = imp[j]*x[j]*x[j];
        if (!(score > 0.0f)) {
            continue;
        }
        if (n == HIFI_OUTLIERS && !(score > best[n - 1])) {
            continue;
        }
        int k = n < HIFI_OUTLIERS ? n++ : n - 1;
        while (k > 0 && score > best[k - 1]) {
            best[k] = best[k - 1];
            sel[k]  = sel[k - 1];
            --k;
        }
        best[k] = score;
        sel[k]  = (uint8_t) j;
    }
    // insertion sort by index so the output does not depend on the score order
    for (int i = 1; i < n; ++i) {
        const uint8_t v = sel[i];
        int k = i;
        while (k > 0 && sel[k - 1] > v) {
            sel[k] = sel[k - 1];
            --k;
        }
        sel[k] = v;
    }
    return n;
}

// Stores the residuals x - deq at the selected positions (unused slots: res = 0, idx = 0),
// applies them to deq and returns the weighted squared error of the result (w NULL: 1).
// A finite residual beyond the fp16 range saturates; a non-finite one is stored as it is.
static float hifi_residuals(const float * GGML_RESTRICT x, const float * GGML_RESTRICT w, float * GGML_RESTRICT deq,
        const uint8_t * GGML_RESTRICT sel, int n, ggml_half * GGML_RESTRICT res, uint8_t * GGML_RESTRICT idx) {
    int m = 0;
    for (int s = 0; s < n; ++s) {
        const int j = sel[s];
        float r = x[j] - deq[j];
        if (isfinite(r)) {
            r = fmaxf(-HIFI_FP16_MAX, fminf(HIFI_FP16_MAX, r));
        }
        const ggml_half h = GGML_FP32_TO_FP16(r);
        if ((h & 0x7fff) == 0) {
            continue; // the base value is already exact: leave the slot unused
        }
        res[m] = h;
        idx[m] = (uint8_t) j;
        deq[j] += GGML_FP16_TO_FP32(h);
        ++m;
    }
    for (; m < HIFI_OUTLIERS; ++m) {
        res[m] = 0;
        idx[m] = 0;
    }
    float err = 0.0f;
    for (int j = 0; j < QK_K; ++j) {
        const float d = x[j] - deq[j];
        err += (w ? w[j] : 1.0f)*d*d;
    }
    return err;
}

typedef union {
    block_q3_K q3_K;
    block_q4_K q4_K;
    block_q5_K q5_K;
    block_q6_K q6_K;
} hifi_any_base;

static void hifi_quantize_block(const struct hifi_base * b, const float * GGML_RESTRICT x,
        const float * GGML_RESTRICT qw, uint8_t * GGML_RESTRICT block) {
    float   imp[QK_K];
    float   xz [QK_K];
    float   wz [QK_K];
    float   deq[QK_K];
    uint8_t sel[HIFI_OUTLIERS];

    hifi_any_base cand[2];
    ggml_half     res [2][HIFI_OUTLIERS];
    uint8_t       idx [2][HIFI_OUTLIERS];
    float         err [2];

    hifi_importance(x, qw, b->importance, imp);
    const int n = hifi_select_outliers(x, imp, sel);

    // candidate 0: the outliers are excluded from the base fit
    memcpy(xz, x, sizeof(xz));
    for (int s = 0; s < n; ++s) {
        xz[sel[s]] = 0.0f;
    }
    if (qw) {
        memcpy(wz, qw, sizeof(wz));
        for (int s = 0; s < n; ++s) {
            wz[sel[s]] = 0.0f;
        }
        b->quantize_imp(xz, &cand[0], wz);
    } else {
        b->quantize_ref(xz, &cand[0]);
    }
    b->dequantize(&cand[0], deq);
    err[0] = hifi_residuals(x, qw, deq, sel, n, res[0], idx[0]);

    // candidate 1: the unmodified base fit with the same outliers restored; never worse
    // than the base type, and better than candidate 0 on flat blocks (e.g. a sine) where
    // removing 8 values does not narrow the range but changes the scale search
    if (qw) {
        b->quantize_imp(x, &cand[1], qw);
    } else {
        b->quantize_ref(x, &cand[1]);
    }
    b->dequantize(&cand[1], deq);
    err[1] = hifi_residuals(x, qw, deq, sel, n, res[1], idx[1]);

    const int best = err[1] < err[0] ? 1 : 0;
    memcpy(block,                 &cand[best],  b->base_size);
    memcpy(block + b->res_offset, res[best],    sizeof(res[best]));
    memcpy(block + b->idx_offset, idx[best],    sizeof(idx[best]));
}

static size_t hifi_quantize_rows(const struct hifi_base * b, const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
        int64_t nrow, int64_t n_per_row, const float * quant_weights) {
    assert(n_per_row % QK_K == 0);
    const int64_t nb = n_per_row / QK_K;
    uint8_t * q = (uint8_t *) dst;
    for (int64_t row = 0; row < nrow; ++row) {
        for (int64_t i = 0; i < nb; ++i) {
            const float * qw = quant_weights ? quant_weights + QK_K*i : NULL;
            hifi_quantize_block(b, src + QK_K*i, qw, q);
            q += b->block_size;
        }
        src += n_per_row;
    }
    return nrow * nb * b->block_size;
}

static inline void hifi_add_outliers(const ggml_half * GGML_RESTRICT res, const uint8_t * GGML_RESTRICT idx, float * GGML_RESTRICT y) {
    for (int s = 0; s < HIFI_OUTLIERS; ++s) {
        y[idx[s]] += GGML_FP16_TO_FP32(res[s]);
    }
}

// ====================== base types, one block at a time

#define HIFI_BASE(bt, imp_kind) \
    static void hifi_##bt##_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y) { \
        quantize_row_##bt##_ref(x, (block_##bt *) y, QK_K); \
    } \
    static void hifi_##bt##_imp(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, const float * GGML_RESTRICT qw) { \
        quantize_##bt(x, y, 1, QK_K, qw); \
    } \
    static void hifi_##bt##_dequantize(const void * GGML_RESTRICT x, float * GGML_RESTRICT y) { \
        dequantize_row_##bt((const block_##bt *) x, y, QK_K); \
    } \
    static const struct hifi_base hifi_base_##bt = { \
        /*.quantize_ref =*/ hifi_##bt##_ref, \
        /*.quantize_imp =*/ hifi_##bt##_imp, \
        /*.dequantize   =*/ hifi_##bt##_dequantize, \
        /*.importance   =*/ imp_kind, \
        /*.base_size    =*/ sizeof(block_##bt), \
        /*.block_size   =*/ sizeof(block_##bt##_hifi), \
        /*.res_offset   =*/ offsetof(block_##bt##_hifi, res), \
        /*.idx_offset   =*/ offsetof(block_##bt##_hifi, idx), \
    };

HIFI_BASE(q3_K, HIFI_IMPORTANCE_X2)
HIFI_BASE(q4_K, HIFI_IMPORTANCE_RMS_AX)
HIFI_BASE(q5_K, HIFI_IMPORTANCE_RMS_AX)
HIFI_BASE(q6_K, HIFI_IMPORTANCE_X2)

// ====================== q3_K_hifi

void quantize_row_q3_K_hifi_ref(const float * GGML_RESTRICT x, block_q3_K_hifi * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    hifi_quantize_rows(&hifi_base_q3_K, x, y, 1, k, NULL);
}

void dequantize_row_q3_K_hifi(const block_q3_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        dequantize_row_q3_K(&x[i].base, y + QK_K*i, QK_K);
        hifi_add_outliers(x[i].res, x[i].idx, y + QK_K*i);
    }
}

size_t quantize_q3_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrow, int64_t n_per_row, const float * quant_weights) {
    return hifi_quantize_rows(&hifi_base_q3_K, src, dst, nrow, n_per_row, quant_weights);
}

// ====================== q4_K_hifi

void quantize_row_q4_K_hifi_ref(const float * GGML_RESTRICT x, block_q4_K_hifi * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    hifi_quantize_rows(&hifi_base_q4_K, x, y, 1, k, NULL);
}

void dequantize_row_q4_K_hifi(const block_q4_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        dequantize_row_q4_K(&x[i].base, y + QK_K*i, QK_K);
        hifi_add_outliers(x[i].res, x[i].idx, y + QK_K*i);
    }
}

size_t quantize_q4_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrow, int64_t n_per_row, const float * quant_weights) {
    return hifi_quantize_rows(&hifi_base_q4_K, src, dst, nrow, n_per_row, quant_weights);
}

// ====================== q5_K_hifi

void quantize_row_q5_K_hifi_ref(const float * GGML_RESTRICT x, block_q5_K_hifi * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    hifi_quantize_rows(&hifi_base_q5_K, x, y, 1, k, NULL);
}

void dequantize_row_q5_K_hifi(const block_q5_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        dequantize_row_q5_K(&x[i].base, y + QK_K*i, QK_K);
        hifi_add_outliers(x[i].res, x[i].idx, y + QK_K*i);
    }
}

size_t quantize_q5_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrow, int64_t n_per_row, const float * quant_weights) {
    return hifi_quantize_rows(&hifi_base_q5_K, src, dst, nrow, n_per_row, quant_weights);
}

// ====================== q6_K_hifi

void quantize_row_q6_K_hifi_ref(const float * GGML_RESTRICT x, block_q6_K_hifi * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    hifi_quantize_rows(&hifi_base_q6_K, x, y, 1, k, NULL);
}

void dequantize_row_q6_K_hifi(const block_q6_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        dequantize_row_q6_K(&x[i].base, y + QK_K*i, QK_K);
        hifi_add_outliers(x[i].res, x[i].idx, y + QK_K*i);
    }
}

size_t quantize_q6_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrow, int64_t n_per_row, const float * quant_weights) {
    return hifi_quantize_rows(&hifi_base_q6_K, src, dst, nrow, n_per_row, quant_weights);
}
