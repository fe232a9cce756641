#include "llama-hifi-format.h"

#include "llama-impl.h"

#include "gguf.h"

#include <stdexcept>

bool llama_hifi_is_type(ggml_type type) {
    switch (type) {
        case GGML_TYPE_Q3_K_HIFI:
        case GGML_TYPE_Q4_K_HIFI:
        case GGML_TYPE_Q5_K_HIFI:
        case GGML_TYPE_Q6_K_HIFI:
            return true;
        default:
            return false;
    }
}

void llama_hifi_set_format(gguf_context * ctx, bool has_hifi) {
    if (has_hifi) {
        gguf_set_val_u32(ctx, LLAMA_HIFI_KEY_FORMAT_VERSION, LLAMA_HIFI_FORMAT_VERSION);
    } else {
        gguf_remove_key(ctx, LLAMA_HIFI_KEY_FORMAT_VERSION);
    }
}

void llama_hifi_check_format(const gguf_context * ctx, const char * fname) {
    const int64_t kid = gguf_find_key(ctx, LLAMA_HIFI_KEY_FORMAT_VERSION);
    if (kid >= 0) {
        const enum gguf_type kv_type = gguf_get_kv_type(ctx, kid);
        if (kv_type != GGUF_TYPE_UINT32) {
            throw std::runtime_error(format("%s: %s has type %s, expected u32: not a HIFI file this build can read",
                fname, LLAMA_HIFI_KEY_FORMAT_VERSION, gguf_type_name(kv_type)));
        }
        const uint32_t version = gguf_get_val_u32(ctx, kid);
        if (version != LLAMA_HIFI_FORMAT_VERSION) {
            throw std::runtime_error(format("%s: HIFI format version %u is unknown to this build, which reads version "
                "%d: the file needs a HIFI-enabled llama.cpp that knows that version",
                fname, version, LLAMA_HIFI_FORMAT_VERSION));
        }
        return;
    }

    const int64_t n_tensors = gguf_get_n_tensors(ctx);
    for (int64_t i = 0; i < n_tensors; ++i) {
        const ggml_type type = gguf_get_tensor_type(ctx, i);
        if (llama_hifi_is_type(type)) {
            throw std::runtime_error(format("%s: tensor '%s' has the HIFI type %s (id %d) but the file has no %s "
                "key: it was not written by a HIFI-enabled llama.cpp, refusing to read it as HIFI",
                fname, gguf_get_tensor_name(ctx, i), ggml_type_name(type), (int) type,
                LLAMA_HIFI_KEY_FORMAT_VERSION));
        }
    }
}
