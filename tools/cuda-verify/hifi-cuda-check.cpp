// Direct check of the CUDA HIFI kernels against the CPU reference dequantization.
//
// test-backend-ops quantizes smooth random data, where the outlier residuals are
// small; a lost or doubled correction may then stay under its error threshold.
// Here every block gets large residuals (|res| in [2, 8]), duplicate indices and
// unused slots, so any mistake in the correction is far above the tolerance.
//
// For each HIFI type:
//   GET_ROWS -> F32 on CUDA vs ggml's to_float (the CPU reference dequantization)
//   MUL_MAT with ne11 = 1, 3, 8 (MMVQ) and 64 (dequantize + cuBLAS) vs a double
//   precision product of the reference dequantization; also the error against
//   the base-only weights (outliers dropped) to show the check can fail.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cuda.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

static const int HIFI_SLOTS = 8;

struct type_pair { ggml_type hifi, base; };

static double nmse(const std::vector<float> & a, const std::vector<double> & ref) {
    double err = 0.0, norm = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        err  += (a[i] - ref[i]) * (a[i] - ref[i]);
        norm += ref[i] * ref[i];
    }
    return err / norm;
}

int main() {
    const type_pair pairs[] = {
        {GGML_TYPE_Q3_K_HIFI, GGML_TYPE_Q3_K}, {GGML_TYPE_Q4_K_HIFI, GGML_TYPE_Q4_K},
        {GGML_TYPE_Q5_K_HIFI, GGML_TYPE_Q5_K}, {GGML_TYPE_Q6_K_HIFI, GGML_TYPE_Q6_K},
    };
    const int64_t K = 4096; // 16 blocks per row
    const int64_t M = 96;   // rows

    ggml_backend_t backend = ggml_backend_cuda_init(0);
    if (!backend) {
        fprintf(stderr, "no CUDA device\n");
        return 1;
    }

    std::mt19937 rng(1234);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    std::uniform_real_distribution<float> mag(2.0f, 8.0f);
    std::uniform_int_distribution<int> pos(0, 255);

    int n_fail = 0;
    for (const type_pair & tp : pairs) {
        const size_t bs_hifi = ggml_type_size(tp.hifi);
        const size_t bs_base = ggml_type_size(tp.base);
        const int64_t nb = K / 256;

        // quantize gaussian weights, then overwrite the slots with large residuals
        std::vector<float> w(K*M);
        for (float & v : w) v = gauss(rng);
        std::vector<uint8_t> q(ggml_row_size(tp.hifi, K)*M);
        ggml_quantize_init(tp.hifi);
        ggml_quantize_chunk(tp.hifi, w.data(), q.data(), 0, M, K, nullptr);
        for (int64_t b = 0; b < M*nb; ++b) {
            uint8_t * blk = q.data() + b*bs_hifi;
            ggml_fp16_t res[HIFI_SLOTS];
            uint8_t     idx[HIFI_SLOTS];
            for (int s = 0; s < HIFI_SLOTS; ++s) {
                const float r = (rng() & 1 ? 1.0f : -1.0f) * mag(rng);
                res[s] = ggml_fp32_to_fp16(s == 7 && b % 3 == 0 ? 0.0f : r); // some unused slots
                idx[s] = (uint8_t) pos(rng);
            }
            if (b % 2 == 0) {
                idx[1] = idx[0]; // duplicate index: residuals add
            }
            memcpy(blk + bs_base, res, sizeof(res));
            memcpy(blk + bs_base + sizeof(res), idx, sizeof(idx));
        }

        // reference dequantization (CPU) and the base-only weights
        std::vector<float> wref(K*M), wbase(K*M);
        ggml_get_type_traits(tp.hifi)->to_float(q.data(), wref.data(), K*M);
        std::vector<uint8_t> qbase(bs_base*M*nb);
        for (int64_t b = 0; b < M*nb; ++b) {
            memcpy(qbase.data() + b*bs_base, q.data() + b*bs_hifi, bs_base);
        }
        ggml_get_type_traits(tp.base)->to_float(qbase.data(), wbase.data(), K*M);

        // GET_ROWS
        {
            const int R = 7;
            const int32_t rows[R] = {0, 5, 5, 17, 42, 95, 1};
            ggml_init_params ip = { 8*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
            ggml_context * ctx = ggml_init(ip);
            ggml_tensor * a   = ggml_new_tensor_2d(ctx, tp.hifi, K, M);
            ggml_tensor * ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, R);
            ggml_tensor * out = ggml_get_rows(ctx, a, ids);
            ggml_cgraph * gf = ggml_new_graph(ctx);
            ggml_build_forward_expand(gf, out);
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
            ggml_backend_tensor_set(a, q.data(), 0, q.size());
            ggml_backend_tensor_set(ids, rows, 0, sizeof(rows));
            ggml_backend_graph_compute(backend, gf);
            std::vector<float> got(K*R);
            ggml_backend_tensor_get(out, got.data(), 0, got.size()*sizeof(float));
            double max_abs = 0.0;
            int64_t n_diff = 0;
            for (int r = 0; r < R; ++r) {
                for (int64_t k = 0; k < K; ++k) {
                    const double d = std::fabs(got[r*K + k] - wref[rows[r]*K + k]);
                    max_abs = d > max_abs ? d : max_abs;
                    n_diff += d != 0.0;
                }
            }
            const bool ok = max_abs <= 1e-5;
            n_fail += !ok;
            printf("%-10s GET_ROWS f32        max|cuda - ref| = %.3g (%lld of %lld values differ)  %s\n",
                ggml_type_name(tp.hifi), max_abs, (long long) n_diff, (long long) (K*R), ok ? "OK" : "FAIL");
            ggml_backend_buffer_free(buf);
            ggml_free(ctx);
        }

        // MUL_MAT
        for (int64_t N : {1, 3, 8, 64}) {
            std::vector<float> x(K*N);
            for (float & v : x) v = gauss(rng);

            ggml_init_params ip = { 8*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
            ggml_context * ctx = ggml_init(ip);
            ggml_tensor * a   = ggml_new_tensor_2d(ctx, tp.hifi, K, M);
            ggml_tensor * b   = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, N);
            ggml_tensor * out = ggml_mul_mat(ctx, a, b);
            ggml_cgraph * gf = ggml_new_graph(ctx);
            ggml_build_forward_expand(gf, out);
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
            ggml_backend_tensor_set(a, q.data(), 0, q.size());
            ggml_backend_tensor_set(b, x.data(), 0, x.size()*sizeof(float));
            ggml_backend_graph_compute(backend, gf);
            std::vector<float> got(M*N);
            ggml_backend_tensor_get(out, got.data(), 0, got.size()*sizeof(float));

            std::vector<double> ref(M*N), ref_base(M*N);
            for (int64_t n = 0; n < N; ++n) {
                for (int64_t m = 0; m < M; ++m) {
                    double s = 0.0, sb = 0.0;
                    for (int64_t k = 0; k < K; ++k) {
                        s  += (double) wref [m*K + k] * x[n*K + k];
                        sb += (double) wbase[m*K + k] * x[n*K + k];
                    }
                    ref[n*M + m] = s;
                    ref_base[n*M + m] = sb;
                }
            }
            const double e  = nmse(got, ref);
            const double eb = nmse(got, ref_base);
            const bool ok = e < 5e-4;
            n_fail += !ok;
            printf("%-10s MUL_MAT ne11=%-3lld  NMSE vs ref = %.3g, vs base-only weights = %.3g (%s)  %s\n",
                ggml_type_name(tp.hifi), (long long) N, e, eb, N <= 8 ? "MMVQ" : "dequantize+cuBLAS", ok ? "OK" : "FAIL");
            ggml_backend_buffer_free(buf);
            ggml_free(ctx);
        }
    }

    ggml_backend_free(backend);
    printf("hifi-cuda-check: %s\n", n_fail == 0 ? "all OK" : "FAILED");
    return n_fail == 0 ? 0 : 1;
}
