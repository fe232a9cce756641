#pragma once

// HIFI types: an unchanged K-quant block followed by HIFI_OUTLIERS outlier slots,
// weight[idx[i]] = dequant(base)[idx[i]] + res[i], slot unused when res[i] == 0.
//
// Included at the end of dequantize.cuh: uses its K-quant dequantize functions.

//================================== k-quants + outliers

// Each call dequantizes one super-block of QK_K values into y with the thread
// layout of the base type (32 threads for q4_K, 64 otherwise). The base block is
// staged as float in shared memory and the residuals are added there in slot
// order, so each value is rounded to dst_t once, as in the CPU reference.
// Every thread of the thread block must call it (it synchronizes).
template<typename dst_t, typename block_t, dequantize_kq_t<float> dequantize_base, int nthreads>
static __device__ __forceinline__ void dequantize_k_hifi(const void * vx, const int64_t ib, dst_t * yy, const int tid) {
    const block_t * x = (const block_t *) vx + ib;

    __shared__ float tmp[QK_K];

    dequantize_base(&x->base, 0, tmp, tid);
    __syncthreads();

    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < HIFI_OUTLIERS; ++i) {
            tmp[x->idx[i]] += __half2float(x->res[i]); // an unused slot adds 0
        }
    }
    __syncthreads();

    for (int l = tid; l < QK_K; l += nthreads) {
        yy[l] = ggml_cuda_cast<dst_t>(tmp[l]);
    }
    __syncthreads(); // tmp is reused when the caller loops over several blocks
}

template<typename dst_t>
static __device__ __forceinline__ void dequantize_q3_K_hifi(const void * vx, const int64_t ib, dst_t * yy, const int tid) {
    dequantize_k_hifi<dst_t, block_q3_K_hifi, dequantize_q3_K<float>, 64>(vx, ib, yy, tid);
}

template<typename dst_t>
static __device__ __forceinline__ void dequantize_q4_K_hifi(const void * vx, const int64_t ib, dst_t * yy, const int tid) {
    dequantize_k_hifi<dst_t, block_q4_K_hifi, dequantize_q4_K<float>, 32>(vx, ib, yy, tid);
}

template<typename dst_t>
static __device__ __forceinline__ void dequantize_q5_K_hifi(const void * vx, const int64_t ib, dst_t * yy, const int tid) {
    dequantize_k_hifi<dst_t, block_q5_K_hifi, dequantize_q5_K<float>, 64>(vx, ib, yy, tid);
}

template<typename dst_t>
static __device__ __forceinline__ void dequantize_q6_K_hifi(const void * vx, const int64_t ib, dst_t * yy, const int tid) {
    dequantize_k_hifi<dst_t, block_q6_K_hifi, dequantize_q6_K<float>, 64>(vx, ib, yy, tid);
}

// contiguous rows, one thread block per super-block (used by convert.cu for the cuBLAS path)
template<typename dst_t, dequantize_kq_t<dst_t> dequantize_kq>
static __global__ void dequantize_block_k_hifi(const void * __restrict__ vx, dst_t * __restrict__ yy) {
    const int64_t i = blockIdx.x;

    dequantize_kq(vx, i, yy + i*QK_K, threadIdx.x);
}

template<typename dst_t>
static void dequantize_row_q3_K_hifi_cuda(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream) {
    const int nb = k / QK_K;
    dequantize_block_k_hifi<dst_t, dequantize_q3_K_hifi<dst_t>><<<nb, 64, 0, stream>>>(vx, y);
}

template<typename dst_t>
static void dequantize_row_q4_K_hifi_cuda(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream) {
    const int nb = k / QK_K;
    dequantize_block_k_hifi<dst_t, dequantize_q4_K_hifi<dst_t>><<<nb, 32, 0, stream>>>(vx, y);
}

template<typename dst_t>
static void dequantize_row_q5_K_hifi_cuda(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream) {
    const int nb = k / QK_K;
    dequantize_block_k_hifi<dst_t, dequantize_q5_K_hifi<dst_t>><<<nb, 64, 0, stream>>>(vx, y);
}

template<typename dst_t>
static void dequantize_row_q6_K_hifi_cuda(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream) {
    const int nb = k / QK_K;
    dequantize_block_k_hifi<dst_t, dequantize_q6_K_hifi<dst_t>><<<nb, 64, 0, stream>>>(vx, y);
}
