#pragma once

#include "llama.h"

struct llama_model;

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

// the ftype whose mixture a recipe ftype starts from; any other ftype is returned unchanged
llama_ftype llama_ftype_hifi_base(llama_ftype ftype);

// the type the recipe of ftype gives this tensor, or base_type (the base ftype's choice, upstream's rules) when
// - the recipe does not name the tensor, or its layer is outside the rule's cut
// - the rule's type has fewer bits per weight than base_type: a recipe only adds bits, so the
//   architecture and MoE rules of the base mixture are kept
// - the rows are not a multiple of the rule's block size and the recipe names no fallback for it
//   (upstream's fallback then applies to base_type)
// rows that cannot take a K-quant get the recipe's fallback type for it where the recipe names one; that
// replaces upstream's fallback type, also where upstream's has more bits, and is counted in n_fallback
ggml_type llama_hifi_tensor_type(
        llama_ftype         ftype,
        llama_hifi_role     role,
        const ggml_tensor * tensor,
        const llama_model & model,
        ggml_type           base_type,
        int               & n_fallback);

// the single type of --pure for ftype (a recipe ftype with HIFI tensors: the HIFI type of its default type);
// default_type for any other ftype
ggml_type llama_hifi_pure_type(llama_ftype ftype, ggml_type default_type);

// log the recipe as it applies to this model
void llama_hifi_log_recipe(llama_ftype ftype, const llama_model & model);
