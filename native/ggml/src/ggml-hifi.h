#pragma once

// HIFI types: an unchanged K-quant block followed by HIFI_OUTLIERS outlier slots
// (block layouts in ggml-common.h)

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// Quantization (reference: no importance weights, deterministic)
GGML_API void quantize_row_q3_K_hifi_ref(const float * GGML_RESTRICT x, block_q3_K_hifi * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_q4_K_hifi_ref(const float * GGML_RESTRICT x, block_q4_K_hifi * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_q5_K_hifi_ref(const float * GGML_RESTRICT x, block_q5_K_hifi * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_q6_K_hifi_ref(const float * GGML_RESTRICT x, block_q6_K_hifi * GGML_RESTRICT y, int64_t k);

// Dequantization
GGML_API void dequantize_row_q3_K_hifi(const block_q3_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_q4_K_hifi(const block_q4_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_q5_K_hifi(const block_q5_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_q6_K_hifi(const block_q6_K_hifi * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// Quantization with optional importance weights (imatrix, n_per_row values)
GGML_API size_t quantize_q3_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t quantize_q4_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t quantize_q5_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t quantize_q6_K_hifi(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

#ifdef __cplusplus
}
#endif
