// Fuzz harness for the HIFI types (built and run by tools/fuzz-hifi under ASan + UBSan).
//
// For each HIFI type, N random blocks: random bytes, then one of these mutations:
// NaN/Inf/finite residual halves, NaN/Inf base d/dmin, duplicate indices, every index 255,
// all-zero residuals. Every block and every Q8_K block lives in its own heap allocation of
// exactly its size, so the sanitizer reports any read outside it.
//
// Checks per block:
//   - ggml_validate_row_data accepts the block iff d, dmin (q4_K/q5_K) and the 8 residuals
//     are finite (computed here independently from the block layout)
//   - dequantize (to_float) and vec_dot (against a random, consistent Q8_K block) run on
//     every block; for valid blocks vec_dot must match sum(dequant * q8) within rounding
//
// usage: fuzz-hifi-harness N [seed]; exit status 1 on any finding, 2 on bad usage.

#include "ggml.h"
#include "ggml-cpu.h"

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;

static uint64_t rng_next(void) {
    // splitmix64
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_bytes(uint8_t * p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        p[i] = (uint8_t) rng_next();
    }
}

static int half_is_finite(uint16_t h) {
    return (h & 0x7c00) != 0x7c00;
}

static uint16_t special_half(void) {
    static const uint16_t specials[] = {
        0x7c00, 0xfc00,         // +-Inf
        0x7e00, 0x7c01, 0xfe00, // NaNs
        0x7bff, 0xfbff,         // +-65504
        0x0001, 0x8000, 0x0000, // subnormal, -0, 0
        0x3c00,                 // 1
    };
    return specials[rng_next() % (sizeof(specials)/sizeof(specials[0]))];
}

struct hifi_case {
    enum ggml_type type;
    size_t size;       // sizeof(block)
    size_t d_off;      // offset of base.d
    size_t dmin_off;   // offset of base.dmin, or SIZE_MAX
    size_t res_off;
    size_t idx_off;
};

#define HIFI_CASE(T, bt, dmin) \
    { T, sizeof(block_##bt##_hifi), offsetof(block_##bt##_hifi, base.d), dmin, \
      offsetof(block_##bt##_hifi, res), offsetof(block_##bt##_hifi, idx) }

static const struct hifi_case cases[] = {
    HIFI_CASE(GGML_TYPE_Q3_K_HIFI, q3_K, SIZE_MAX),
    HIFI_CASE(GGML_TYPE_Q4_K_HIFI, q4_K, offsetof(block_q4_K_hifi, base.dmin)),
    HIFI_CASE(GGML_TYPE_Q5_K_HIFI, q5_K, offsetof(block_q5_K_hifi, base.dmin)),
    HIFI_CASE(GGML_TYPE_Q6_K_HIFI, q6_K, SIZE_MAX),
};

static uint16_t get_half(const uint8_t * p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static void set_half(uint8_t * p, uint16_t h) {
    memcpy(p, &h, 2);
}

static void mutate(const struct hifi_case * c, uint8_t * b) {
    uint8_t * idx = b + c->idx_off;
    uint8_t * res = b + c->res_off;
    switch (rng_next() % 8) {
        case 0: break; // plain random bytes
        case 1: set_half(res + 2*(rng_next() % HIFI_OUTLIERS), special_half()); break;
        case 2: set_half(b + c->d_off, special_half()); break;
        case 3: if (c->dmin_off != SIZE_MAX) set_half(b + c->dmin_off, special_half()); break;
        case 4: { const uint8_t v = (uint8_t) rng_next(); memset(idx, v, HIFI_OUTLIERS); } break;
        case 5: memset(idx, 255, HIFI_OUTLIERS); break;
        case 6: memset(res, 0, 2*HIFI_OUTLIERS); break;
        case 7: // moderate values everywhere so vec_dot is checked on valid blocks
            {
                set_half(b + c->d_off, 0x2000 | (uint16_t)(rng_next() & 0x3ff));
                if (c->dmin_off != SIZE_MAX) set_half(b + c->dmin_off, 0x2000 | (uint16_t)(rng_next() & 0x3ff));
                for (int s = 0; s < HIFI_OUTLIERS; ++s) set_half(res + 2*s, (uint16_t)(rng_next() & 0xbfff));
            } break;
    }
}

static int expected_valid(const struct hifi_case * c, const uint8_t * b) {
    if (!half_is_finite(get_half(b + c->d_off))) return 0;
    if (c->dmin_off != SIZE_MAX && !half_is_finite(get_half(b + c->dmin_off))) return 0;
    for (int s = 0; s < HIFI_OUTLIERS; ++s) {
        if (!half_is_finite(get_half(b + c->res_off + 2*s))) return 0;
    }
    return 1;
}

static void random_q8_K(block_q8_K * y) {
    y->d = (float) ((rng_next() % 2000) + 1) * 1e-4f;
    rng_bytes((uint8_t *) y->qs, sizeof(y->qs));
    for (int j = 0; j < QK_K/16; ++j) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += y->qs[16*j + l];
        y->bsums[j] = (int16_t) sum;
    }
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s N [seed]\n", argv[0]);
        return 2;
    }
    const long long n = atoll(argv[1]);
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 0) : 1;

    ggml_cpu_init();

    long long tried = 0, valid = 0, findings = 0, checked_dot = 0;
    for (size_t t = 0; t < sizeof(cases)/sizeof(cases[0]); ++t) {
        const struct hifi_case * c = &cases[t];
        const struct ggml_type_traits     * tt  = ggml_get_type_traits(c->type);
        const struct ggml_type_traits_cpu * cpu = ggml_get_type_traits_cpu(c->type);
        if (tt->type_size != c->size || !tt->to_float || !cpu->vec_dot || cpu->vec_dot_type != GGML_TYPE_Q8_K) {
            fprintf(stderr, "%s: missing or inconsistent traits\n", ggml_type_name(c->type));
            return 1;
        }
        for (long long i = 0; i < n; ++i) {
            uint8_t    * b = malloc(c->size);
            float      * f = malloc(QK_K*sizeof(float));
            block_q8_K * y = malloc(sizeof(block_q8_K));
            rng_bytes(b, c->size);
            mutate(c, b);
            random_q8_K(y);

            const int want = expected_valid(c, b);
            const int got  = ggml_validate_row_data(c->type, b, c->size);
            if (want != got) {
                fprintf(stderr, "%s block %lld: validate returned %d, expected %d\n", ggml_type_name(c->type), i, got, want);
                ++findings;
            }
            tt->to_float(b, f, QK_K);
            float dot = 0.0f;
            cpu->vec_dot(QK_K, &dot, 0, b, 0, y, 0, 1);

            if (want) {
                ++valid;
                double ref = 0.0, mag = 0.0;
                int finite = 1;
                for (int j = 0; j < QK_K; ++j) {
                    const double term = (double) f[j] * y->d * y->qs[j];
                    finite &= isfinite(f[j]);
                    ref += term;
                    mag += fabs(term);
                }
                // the kernel sums the residual products one by one, dequant adds the residuals
                // to the weight first: with cancelling residuals (e.g. 8 on one index) the
                // rounding scales with the individual products
                for (int s = 0; s < HIFI_OUTLIERS; ++s) {
                    const float r = ggml_fp16_to_fp32(get_half(b + c->res_off + 2*s));
                    mag += fabs((double) r * y->d * y->qs[b[c->idx_off + s]]);
                }
                // random base bytes can overflow fp32 partial sums: only compare finite cases
                if (finite && isfinite(mag) && mag < 1e30) {
                    ++checked_dot;
                    if (!(fabs(dot - ref) <= 1e-4*mag + 1e-6)) {
                        fprintf(stderr, "%s block %lld: vec_dot %g vs dequant reference %g (sum|terms| %g)\n",
                                ggml_type_name(c->type), i, dot, ref, mag);
                        ++findings;
                    }
                }
            }
            free(y);
            free(f);
            free(b);
            ++tried;
            if (findings > 20) {
                break;
            }
        }
    }
    printf("fuzz-hifi: %lld blocks tried (%lld valid, %lld vec_dot checked against dequant), %lld findings\n",
           tried, valid, checked_dot, findings);
    return findings ? 1 : 0;
}
