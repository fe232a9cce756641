#pragma once

#include "llama.h"

#include <cstdint>

//
// HIFI ftypes: per-tensor recipes applied on top of a stock ftype's mixture
//
// llama-quant.cpp computes the base ftype's choice for a tensor as usual, then asks the recipe
// whether it names the tensor. The recipes are a table in llama-quant-hifi.cpp.
//

// the tensor roles the recipes name; llama-quant.cpp maps its tensor categories onto them
enum llama_hifi_role {
    LLAMA_HIFI_ROLE_OTHER,
    LLAMA_HIFI_ROLE_TOKEN_EMBD,
    LLAMA_HIFI_ROLE_OUTPUT,      // output.weight, or the token embeddings when they are tied to it
    LLAMA_HIFI_ROLE_ATTN_V,      // attn_v, attn_qkv, attn_kv_b
    LLAMA_HIFI_ROLE_ATTN_OUTPUT,
    LLAMA_HIFI_ROLE_FFN_GATE,
    LLAMA_HIFI_ROLE_FFN_DOWN,    // dense, expert and shared-expert ffn_down
};

bool llama_ftype_is_hifi(llama_ftype ftype);

// the ftype whose mixture a HIFI ftype starts from; any other ftype is returned unchanged
llama_ftype llama_ftype_hifi_base(llama_ftype ftype);

// the type the recipe of ftype gives this tensor, or base_type (the base ftype's choice) when the
// recipe does not name the tensor, its layer is outside the recipe's cut, or its rows are not a
// multiple of the recipe type's block size (the base ftype's own fallback then applies); for rows that
// cannot take a K-quant, a recipe may replace upstream's fallback type (Q3_K_HIFI: Q5_0 for Q3_K, Q5_1 for Q6_K)
//   n_layer:  number of layers of the model (the cuts are fractions of it)
//   n_params: parameter count of the model (Q4_K_HIFI's coverage shrinks with it)
ggml_type llama_hifi_tensor_type(
        llama_ftype         ftype,
        llama_hifi_role     role,
        const ggml_tensor * tensor,
        int                 n_layer,
        uint64_t            n_params,
        ggml_type           base_type);

// log the recipe as it applies to a model of this size
void llama_hifi_log_recipe(llama_ftype ftype, int n_layer, uint64_t n_params);
