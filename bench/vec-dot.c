// Single-thread vec_dot throughput of each HIFI type vs its base type, data in cache.
//
// Less noisy than test-backend-ops perf on a shared machine: one thread, best of 15
// passes over 256 rows x 14336 weights against one Q8_K activation row.
//
// `./vec-dot layout` instead runs 1024 rows x 8 activation columns in the loop order of
// ggml_compute_forward_mul_mat_one_chunk (16 rows per block, every column of a block) with
// the weights placed at 0, 1024, ..., 8192 bytes past a 4 KiB boundary: on the machine we
// measured the time of one type moved by up to 1.7x between placements in one run, which is why
// single test-backend-ops n=8 ratios are not comparable between types (docs/hifi-kernels-cpu.md).
//
//   cc -O2 bench/vec-dot.c -I$SRC/ggml/include -L$BIN -lggml-cpu -lggml-base -lm -Wl,-rpath,$BIN -o vec-dot
//   ./vec-dot [layout]
// (SRC: a patched tree, `python3 hifikit/upstream.py prepare --out SRC`; BIN: its build/bin)

#include "ggml.h"
#include "ggml-cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec*1e-9;
}

static double best_time(enum ggml_type type, const float * x, int rows, int k, const void * qa) {
    const size_t rs = ggml_row_size(type, k);
    char * q = malloc(rs*rows);
    ggml_quantize_chunk(type, x, q, 0, rows, k, NULL);
    const struct ggml_type_traits_cpu * c = ggml_get_type_traits_cpu(type);
    double best = 1e30;
    volatile float sink = 0.0f;
    for (int rep = 0; rep < 15; ++rep) {
        const double t0 = now_s();
        for (int r = 0; r < rows; ++r) {
            float s;
            c->vec_dot(k, &s, 0, q + rs*r, 0, qa, 0, 1);
            sink += s;
        }
        const double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    free(q);
    return best;
}

// mul_mat order: blocks of 16 rows, each block against every column; weights placed off bytes past 4 KiB
static double best_time_mul_mat(enum ggml_type type, const float * x, int rows, int k, const char * qa, int cols, size_t off) {
    const size_t rs = ggml_row_size(type, k);
    char * buf = aligned_alloc(4096, (rs*rows + off + 4095)/4096*4096);
    char * q = buf + off;
    ggml_quantize_chunk(type, x, q, 0, rows, k, NULL);
    const struct ggml_type_traits_cpu * c = ggml_get_type_traits_cpu(type);
    const size_t qa_rs = ggml_row_size(GGML_TYPE_Q8_K, k);
    double best = 1e30;
    volatile float sink = 0.0f;
    for (int rep = 0; rep < 5; ++rep) {
        const double t0 = now_s();
        for (int r0 = 0; r0 < rows; r0 += 16) {
            for (int col = 0; col < cols; ++col) {
                for (int r = r0; r < r0 + 16; ++r) {
                    float s;
                    c->vec_dot(k, &s, 0, q + rs*r, 0, qa + qa_rs*col, 0, 1);
                    sink += s;
                }
            }
        }
        const double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    free(buf);
    return best;
}

static void layout(const enum ggml_type pairs[4][2]) {
    const int k = 14336, rows = 1024, cols = 8;
    float * x = malloc(sizeof(float)*k*rows);
    float * a = malloc(sizeof(float)*k*cols);
    srand(1);
    for (size_t i = 0; i < (size_t) k*rows; ++i) x[i] = rand()/(float) RAND_MAX - 0.5f;
    for (size_t i = 0; i < (size_t) k*cols; ++i) a[i] = rand()/(float) RAND_MAX - 0.5f;
    const size_t qa_rs = ggml_row_size(GGML_TYPE_Q8_K, k);
    char * qa = aligned_alloc(4096, (qa_rs*cols + 4095)/4096*4096);
    for (int col = 0; col < cols; ++col) {
        ggml_get_type_traits_cpu(GGML_TYPE_Q8_K)->from_float(a + (size_t) k*col, qa + qa_rs*col, k);
    }
    printf("%-10s %6s %12s %12s %8s\n", "type", "offset", "base us", "hifi us", "ratio");
    for (int p = 0; p < 4; ++p) {
        for (size_t off = 0; off <= 8192; off += 1024) {
            const double tb = best_time_mul_mat(pairs[p][0], x, rows, k, qa, cols, off);
            const double th = best_time_mul_mat(pairs[p][1], x, rows, k, qa, cols, off);
            printf("%-10s %6zu %12.1f %12.1f %8.3f\n", ggml_type_name(pairs[p][1]), off, tb*1e6, th*1e6, tb/th);
        }
    }
    free(qa);
    free(a);
    free(x);
}

int main(int argc, char ** argv) {
    ggml_cpu_init();
    const int k = 14336, rows = 256;
    float * x = malloc(sizeof(float)*k*rows);
    float * a = malloc(sizeof(float)*k);
    srand(1);
    for (size_t i = 0; i < (size_t) k*rows; ++i) x[i] = rand()/(float) RAND_MAX - 0.5f;
    for (int i = 0; i < k; ++i) a[i] = rand()/(float) RAND_MAX - 0.5f;
    void * qa = malloc(ggml_row_size(GGML_TYPE_Q8_K, k));
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_K)->from_float(a, qa, k);

    const enum ggml_type pairs[4][2] = {
        { GGML_TYPE_Q3_K, GGML_TYPE_Q3_K_HIFI }, { GGML_TYPE_Q4_K, GGML_TYPE_Q4_K_HIFI },
        { GGML_TYPE_Q5_K, GGML_TYPE_Q5_K_HIFI }, { GGML_TYPE_Q6_K, GGML_TYPE_Q6_K_HIFI },
    };
    if (argc > 1 && strcmp(argv[1], "layout") == 0) {
        layout(pairs);
        return 0;
    }
    printf("%-10s %12s %12s %8s\n", "type", "base us", "hifi us", "ratio");
    for (int p = 0; p < 4; ++p) {
        const double tb = best_time(pairs[p][0], x, rows, k, qa);
        const double th = best_time(pairs[p][1], x, rows, k, qa);
        printf("%-10s %12.1f %12.1f %8.3f\n", ggml_type_name(pairs[p][1]), tb*1e6, th*1e6, tb/th);
    }
    return 0;
}
