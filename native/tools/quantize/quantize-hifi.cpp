#include "quantize-hifi.h"

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

struct quantize_hifi_scale_info {
    quantize_hifi_scale scale;
    const char *        name;
    int64_t             max_params; // largest parameter count of this scale
    const char *        ftype_name; // as in llama-quantize's type list
};

static const quantize_hifi_scale_info hifi_scales[] = {
    { QUANTIZE_HIFI_SCALE_SMALL,  "small",   2000000000LL, "Q3_K_HIFI"   },
    { QUANTIZE_HIFI_SCALE_MEDIUM, "medium", 10000000000LL, "Q4_K_XM"     },
    { QUANTIZE_HIFI_SCALE_LARGE,  "large",      INT64_MAX, "Q4_K_HIFI_L" },
};

static const quantize_hifi_scale_info & hifi_scale_info(quantize_hifi_scale scale) {
    for (const auto & info : hifi_scales) {
        if (info.scale == scale) {
            return info;
        }
    }
    GGML_ABORT("invalid HIFI scale %d", (int) scale);
}

bool quantize_hifi_parse_scale(const char * name, quantize_hifi_scale & scale) {
    for (const auto & info : hifi_scales) {
        if (strcmp(info.name, name) == 0) {
            scale = info.scale;
            return true;
        }
    }
    return false;
}

quantize_hifi_scale quantize_hifi_scale_for(int64_t n_params) {
    for (const auto & info : hifi_scales) {
        if (n_params <= info.max_params) {
            return info.scale;
        }
    }
    return QUANTIZE_HIFI_SCALE_LARGE;
}

const char * quantize_hifi_ftype_name(quantize_hifi_scale scale) {
    return hifi_scale_info(scale).ftype_name;
}

bool quantize_hifi_is_number(const char * arg) {
    if (*arg == '\0') {
        return false;
    }
    for (; *arg; ++arg) {
        if (*arg < '0' || *arg > '9') {
            return false;
        }
    }
    return true;
}

// element count of the tensors of one GGUF file, and its split count
static bool hifi_count_file(const std::string & fname, int64_t & n_params, int & n_split) {
    ggml_context * ctx = nullptr;
    gguf_init_params params = {
        /*.no_alloc =*/ true,
        /*.ctx      =*/ &ctx,
    };
    gguf_context * gctx = gguf_init_from_file(fname.c_str(), params);
    if (gctx == nullptr) {
        fprintf(stderr, "%s: failed to read the GGUF header of '%s'\n", __func__, fname.c_str());
        return false;
    }

    for (ggml_tensor * t = ggml_get_first_tensor(ctx); t != nullptr; t = ggml_get_next_tensor(ctx, t)) {
        n_params += ggml_nelements(t);
    }

    n_split = 1;
    const int64_t kid = gguf_find_key(gctx, "split.count");
    if (kid >= 0) {
        // the loader reads split.count as u16 and refuses any other type
        if (gguf_get_kv_type(gctx, kid) != GGUF_TYPE_UINT16) {
            fprintf(stderr, "%s: '%s': split.count has type %s, expected %s\n", __func__, fname.c_str(),
                    gguf_type_name(gguf_get_kv_type(gctx, kid)), gguf_type_name(GGUF_TYPE_UINT16));
            ggml_free(ctx);
            gguf_free(gctx);
            return false;
        }
        n_split = gguf_get_val_u16(gctx, kid);
    }

    ggml_free(ctx);
    gguf_free(gctx);
    return true;
}

int64_t quantize_hifi_count_params(const std::string & fname) {
    int64_t n_params = 0;
    int     n_split  = 1;
    if (!hifi_count_file(fname, n_params, n_split)) {
        return -1;
    }
    if (n_split <= 1) {
        return n_params;
    }

    // a split model: fname is its first split, the others follow the split naming
    std::vector<char> buf(4096, 0);
    const int32_t len = llama_split_prefix(buf.data(), buf.size(), fname.c_str(), 0, n_split);
    if (len <= 0) {
        fprintf(stderr, "%s: '%s' has %d splits but is not named as the first one\n", __func__, fname.c_str(), n_split);
        return -1;
    }
    const std::string prefix(buf.data(), len);
    for (int i = 1; i < n_split; ++i) {
        llama_split_path(buf.data(), buf.size(), prefix.c_str(), i, n_split);
        int n_split_i = 1;
        if (!hifi_count_file(buf.data(), n_params, n_split_i)) {
            return -1;
        }
    }
    return n_params;
}

bool quantize_hifi_choose(const std::string & fname, quantize_hifi_scale override_scale, quantize_hifi_scale & scale) {
    const int64_t n_params = quantize_hifi_count_params(fname);
    if (n_params < 0) {
        return false;
    }

    const quantize_hifi_scale detected = quantize_hifi_scale_for(n_params);
    scale = override_scale != QUANTIZE_HIFI_SCALE_AUTO ? override_scale : detected;

    fprintf(stderr, "%s: model has %" PRId64 " parameters (%.2f B): scale %s (thresholds 2e9, 1e10)\n",
            __func__, n_params, n_params*1e-9, hifi_scale_info(detected).name);
    if (override_scale != QUANTIZE_HIFI_SCALE_AUTO) {
        fprintf(stderr, "%s: --hifi-scale %s overrides it -> %s\n",
                __func__, hifi_scale_info(scale).name, hifi_scale_info(scale).ftype_name);
    } else {
        fprintf(stderr, "%s: --hifi -> %s\n", __func__, hifi_scale_info(scale).ftype_name);
    }
    return true;
}
