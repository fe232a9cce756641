#pragma once

// HIFI types: an unchanged K-quant block followed by HIFI_OUTLIERS outlier slots,
// weight[idx[i]] = dequant(base)[idx[i]] + res[i], slot unused when res[i] == 0.
// The dot product is the base type's dot product plus, for each slot, the residual
// times the q8_1 activation at its index.
//
// Included at the end of vecdotq.cuh: uses its K-quant vec_dot functions.

// MMVQ calls vec_dot with qi/vdr different values iqs = 0, vdr, 2*vdr, ... for each
// block, one per thread. Slot iqs/vdr is added by the call that has it, so every slot
// is counted exactly once per block, and the 8 loads are spread over 8 threads.
// The other calls read a valid slot too and multiply it by 0: without branches the
// loads can be issued early, which matters when MMVQ inlines this for many columns.
template <int qi, int vdr>
static __device__ __forceinline__ float vec_dot_hifi_outliers_q8_1(
    const ggml_half * __restrict__ res, const uint8_t * __restrict__ idx, const block_q8_1 * __restrict__ bq8_1, const int & iqs) {
    static_assert(qi/vdr >= HIFI_OUTLIERS, "fewer vec_dot calls per block than outlier slots");

    const int   slot = (iqs/vdr) % HIFI_OUTLIERS;
    const float r    = iqs/vdr < HIFI_OUTLIERS ? __half2float(res[slot]) : 0.0f;

    const int j = idx[slot];
    const block_q8_1 * b8 = bq8_1 + j/QK8_1;

    return r * __low2float(b8->ds) * b8->qs[j % QK8_1];
}

static __device__ __forceinline__ float vec_dot_q3_K_hifi_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {

    const block_q3_K_hifi * bq = (const block_q3_K_hifi *) vbq + kbx;

    return vec_dot_q3_K_q8_1(&bq->base, bq8_1, 0, iqs) +
        vec_dot_hifi_outliers_q8_1<QI3_K, VDR_Q3_K_Q8_1_MMVQ>(bq->res, bq->idx, bq8_1, iqs);
}

static __device__ __forceinline__ float vec_dot_q4_K_hifi_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {

    const block_q4_K_hifi * bq = (const block_q4_K_hifi *) vbq + kbx;

    return vec_dot_q4_K_q8_1(&bq->base, bq8_1, 0, iqs) +
        vec_dot_hifi_outliers_q8_1<QI4_K, VDR_Q4_K_Q8_1_MMVQ>(bq->res, bq->idx, bq8_1, iqs);
}

static __device__ __forceinline__ float vec_dot_q5_K_hifi_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {

    const block_q5_K_hifi * bq = (const block_q5_K_hifi *) vbq + kbx;

    return vec_dot_q5_K_q8_1(&bq->base, bq8_1, 0, iqs) +
        vec_dot_hifi_outliers_q8_1<QI5_K, VDR_Q5_K_Q8_1_MMVQ>(bq->res, bq->idx, bq8_1, iqs);
}

static __device__ __forceinline__ float vec_dot_q6_K_hifi_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {

    const block_q6_K_hifi * bq = (const block_q6_K_hifi *) vbq + kbx;

    return vec_dot_q6_K_q8_1(&bq->base, bq8_1, 0, iqs) +
        vec_dot_hifi_outliers_q8_1<QI6_K, VDR_Q6_K_Q8_1_MMVQ>(bq->res, bq->idx, bq8_1, iqs);
}
