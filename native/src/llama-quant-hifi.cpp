#include "llama-quant-hifi.h"

#include "llama-impl.h"
#include "llama-model.h"

#include <cinttypes>
#include <cstdio>

//
// layer cuts: the percentage of leading layers a rule covers, as a function of the model size
// tensors outside the repeating blocks (output, token_embd) are always covered
//

static int hifi_layers_all(uint64_t /*n_params*/) {
    return 100;
}

// the first 40% of the layers (rounded down): layers 0-10 of a 28-layer model
static int hifi_layers_early(uint64_t /*n_params*/) {
    return 40;
}

// ffn_down coverage shrinks with the model size
static int hifi_layers_ffn_down(uint64_t n_params) {
    if (n_params <= 10000000000ull) return 50;
    if (n_params <= 70000000000ull) return 25;
    return 0;
}

// above 100B parameters, only the first quarter of attn_v
static int hifi_layers_attn_v(uint64_t n_params) {
    return n_params > 100000000000ull ? 25 : 100;
}

//
// recipes
//

// a rule's type: GGML_TYPE_COUNT stands for "the HIFI type of the base ftype's K-quant choice"
#define HIFI_TYPE_OF_BASE GGML_TYPE_COUNT

struct hifi_rule {
    llama_hifi_role role;
    ggml_type       type;
    int          (* layer_pct)(uint64_t n_params);
};

// rows whose length is not a multiple of 256 cannot take K-quant blocks; upstream's tensor_type_fallback maps
// Q3_K -> Q4_0 and Q6_K -> Q8_0, a recipe can name other 32-block types (the HIFI twin of a K-quant is mapped
// like the K-quant)
struct hifi_fallback {
    ggml_type from;
    ggml_type to;
};

#define HIFI_MAX_RULES     6
#define HIFI_MAX_FALLBACKS 2

struct hifi_recipe {
    llama_ftype   ftype;
    const char  * name;
    llama_ftype   base;      // stock mixture for what the rules do not name; the ftype itself = upstream's generic rules
    const char  * base_name;
    ggml_type     pure;      // the single type of --pure
    hifi_rule     rules[HIFI_MAX_RULES];         // unused entries are zero, i.e. LLAMA_HIFI_ROLE_OTHER
    hifi_fallback fallbacks[HIFI_MAX_FALLBACKS]; // unused entries are zero, i.e. from = GGML_TYPE_F32
};

static const hifi_recipe hifi_recipes[] = {
    // Q3_K_M's mixture with the HIFI twin of its choice (the same grid plus outliers) on ffn_down and on the early
    // attn_v; the bytes come from the rows that cannot take K-quants: Q5_0 instead of Q4_0 for Q3_K rows (Q5_0 has
    // a llamafile sgemm kernel, Q5_1 does not) and Q5_1 instead of Q8_0 for an output that cannot take Q6_K
    {
        LLAMA_FTYPE_MOSTLY_Q3_K_HIFI, "Q3_K_HIFI", LLAMA_FTYPE_MOSTLY_Q3_K_M, "Q3_K_M", GGML_TYPE_Q3_K_HIFI, {
            { LLAMA_HIFI_ROLE_ATTN_V,      HIFI_TYPE_OF_BASE,   hifi_layers_early    },
            { LLAMA_HIFI_ROLE_FFN_DOWN,    HIFI_TYPE_OF_BASE,   hifi_layers_all      },
            { LLAMA_HIFI_ROLE_OUTPUT,      GGML_TYPE_Q6_K,      hifi_layers_all      },
        }, {
            { GGML_TYPE_Q3_K, GGML_TYPE_Q5_0 },
            { GGML_TYPE_Q6_K, GGML_TYPE_Q5_1 },
        },
    },
    {
        LLAMA_FTYPE_MOSTLY_Q4_K_HIFI, "Q4_K_HIFI", LLAMA_FTYPE_MOSTLY_Q4_K_HIFI, "Q4_K", GGML_TYPE_Q4_K_HIFI, {
            { LLAMA_HIFI_ROLE_ATTN_V,      GGML_TYPE_Q4_K_HIFI, hifi_layers_attn_v   },
            { LLAMA_HIFI_ROLE_FFN_DOWN,    GGML_TYPE_Q4_K_HIFI, hifi_layers_ffn_down },
            { LLAMA_HIFI_ROLE_OUTPUT,      GGML_TYPE_Q6_K,      hifi_layers_all      },
        }, {},
    },
    // stock types only: a Q4_K mixture with more Q5_K/Q6_K tensors than Q4_K_M
    {
        LLAMA_FTYPE_MOSTLY_Q4_K_XM, "Q4_K_XM", LLAMA_FTYPE_MOSTLY_Q4_K_XM, "Q4_K", GGML_TYPE_Q4_K, {
            { LLAMA_HIFI_ROLE_ATTN_V,      GGML_TYPE_Q5_K,      hifi_layers_all      },
            { LLAMA_HIFI_ROLE_FFN_GATE,    GGML_TYPE_Q5_K,      hifi_layers_all      },
            { LLAMA_HIFI_ROLE_TOKEN_EMBD,  GGML_TYPE_Q5_K,      hifi_layers_all      },
            { LLAMA_HIFI_ROLE_FFN_DOWN,    GGML_TYPE_Q6_K,      hifi_layers_all      },
            { LLAMA_HIFI_ROLE_ATTN_OUTPUT, GGML_TYPE_Q6_K,      hifi_layers_all      },
            { LLAMA_HIFI_ROLE_OUTPUT,      GGML_TYPE_Q6_K,      hifi_layers_all      },
        }, {},
    },
    {
        LLAMA_FTYPE_MOSTLY_Q4_K_HIFI_L, "Q4_K_HIFI_L", LLAMA_FTYPE_MOSTLY_Q4_K_HIFI_L, "Q4_K", GGML_TYPE_Q4_K_HIFI, {
            { LLAMA_HIFI_ROLE_FFN_DOWN,    GGML_TYPE_Q6_K_HIFI, hifi_layers_all      },
            { LLAMA_HIFI_ROLE_ATTN_OUTPUT, GGML_TYPE_Q6_K_HIFI, hifi_layers_all      },
            { LLAMA_HIFI_ROLE_OUTPUT,      GGML_TYPE_Q6_K_HIFI, hifi_layers_all      },
        }, {},
    },
};

static const hifi_recipe * hifi_find_recipe(llama_ftype ftype) {
    for (const auto & recipe : hifi_recipes) {
        if (recipe.ftype == ftype) {
            return &recipe;
        }
    }
    return nullptr;
}

static const char * hifi_role_name(llama_hifi_role role) {
    switch (role) {
        case LLAMA_HIFI_ROLE_TOKEN_EMBD:  return "token_embd";
        case LLAMA_HIFI_ROLE_OUTPUT:      return "output";
        case LLAMA_HIFI_ROLE_ATTN_V:      return "attn_v";
        case LLAMA_HIFI_ROLE_ATTN_OUTPUT: return "attn_output";
        case LLAMA_HIFI_ROLE_FFN_GATE:    return "ffn_gate";
        case LLAMA_HIFI_ROLE_FFN_DOWN:    return "ffn_down";
        default:                          return "other";
    }
}

// number of leading layers a rule covers
static int hifi_rule_n_cut(const hifi_rule & rule, int n_layer, uint64_t n_params) {
    return n_layer * rule.layer_pct(n_params) / 100;
}

// the HIFI twin of a K-quant; any other type is returned unchanged
static ggml_type hifi_type_of(ggml_type type) {
    switch (type) {
        case GGML_TYPE_Q3_K: return GGML_TYPE_Q3_K_HIFI;
        case GGML_TYPE_Q4_K: return GGML_TYPE_Q4_K_HIFI;
        case GGML_TYPE_Q5_K: return GGML_TYPE_Q5_K_HIFI;
        case GGML_TYPE_Q6_K: return GGML_TYPE_Q6_K_HIFI;
        default:             return type;
    }
}

// the K-quant a HIFI type extends; any other type is returned unchanged
static ggml_type hifi_k_quant_of(ggml_type type) {
    switch (type) {
        case GGML_TYPE_Q3_K_HIFI: return GGML_TYPE_Q3_K;
        case GGML_TYPE_Q4_K_HIFI: return GGML_TYPE_Q4_K;
        case GGML_TYPE_Q5_K_HIFI: return GGML_TYPE_Q5_K;
        case GGML_TYPE_Q6_K_HIFI: return GGML_TYPE_Q6_K;
        default:                  return type;
    }
}

// what tensor_type_fallback in llama-quant.cpp gives rows that cannot take this K-quant (or its HIFI twin);
// any other type is returned unchanged
static ggml_type hifi_upstream_fallback(ggml_type type) {
    switch (hifi_k_quant_of(type)) {
        case GGML_TYPE_Q2_K:
        case GGML_TYPE_Q3_K: return GGML_TYPE_Q4_0;
        case GGML_TYPE_Q4_K: return GGML_TYPE_Q5_0;
        case GGML_TYPE_Q5_K: return GGML_TYPE_Q5_1;
        case GGML_TYPE_Q6_K: return GGML_TYPE_Q8_0;
        default:             return type;
    }
}

static bool hifi_fits(ggml_type type, int64_t ncols) {
    return ncols % ggml_blck_size(type) == 0;
}

static float hifi_bpw(ggml_type type) {
    return 8.0f*ggml_type_size(type)/ggml_blck_size(type);
}

static const char * hifi_rule_type_name(const hifi_rule & rule) {
    return rule.type == HIFI_TYPE_OF_BASE ? "HIFI twin" : ggml_type_name(rule.type);
}

llama_ftype llama_ftype_hifi_base(llama_ftype ftype) {
    const hifi_recipe * recipe = hifi_find_recipe(ftype);
    return recipe ? recipe->base : ftype;
}

ggml_type llama_hifi_pure_type(llama_ftype ftype, ggml_type default_type) {
    const hifi_recipe * recipe = hifi_find_recipe(ftype);
    return recipe ? recipe->pure : default_type;
}

// the recipe's 32-block type for rows of ncols weights that cannot take this K-quant (or its HIFI twin),
// GGML_TYPE_COUNT where the recipe names none
static ggml_type hifi_recipe_fallback(const hifi_recipe & recipe, ggml_type type, int64_t ncols) {
    const ggml_type k_quant = hifi_k_quant_of(type);
    for (int i = 0; i < HIFI_MAX_FALLBACKS && recipe.fallbacks[i].from != GGML_TYPE_F32; ++i) {
        const hifi_fallback & fallback = recipe.fallbacks[i];
        if (fallback.from == k_quant && ncols % ggml_blck_size(fallback.to) == 0) {
            return fallback.to;
        }
    }
    return GGML_TYPE_COUNT;
}

// whether upstream's choice for rows that cannot take this K-quant is upstream's own fallback for it, which the
// recipe's fallback replaces: the K-quant itself (tensor_type_fallback maps it), or Q8_0 for an output that cannot
// take Q6_K (llama_tensor_get_type_impl picks it for such rows; for Falcon it picks Q8_0 whatever the rows, and
// that is kept)
static bool hifi_base_is_fallback(const llama_model & model, llama_hifi_role role, ggml_type k_quant, ggml_type base_type) {
    if (hifi_k_quant_of(base_type) == k_quant) {
        return true;
    }
    return role == LLAMA_HIFI_ROLE_OUTPUT && k_quant == GGML_TYPE_Q6_K && base_type == GGML_TYPE_Q8_0 &&
           model.arch != LLM_ARCH_FALCON;
}

// the recipe's rule for this tensor, or base_type where no rule applies
static ggml_type hifi_rule_type(
        const hifi_recipe & recipe,
        llama_hifi_role     role,
        const ggml_tensor * tensor,
        int                 n_layer,
        uint64_t            n_params,
        ggml_type           base_type) {
    if (role == LLAMA_HIFI_ROLE_OTHER) {
        return base_type;
    }

    for (int i = 0; i < HIFI_MAX_RULES && recipe.rules[i].role != LLAMA_HIFI_ROLE_OTHER; ++i) {
        const hifi_rule & rule = recipe.rules[i];
        if (rule.role != role) {
            continue;
        }
        int i_layer = -1;
        if (sscanf(ggml_get_name(tensor), "blk.%d.", &i_layer) == 1 &&
            rule.layer_pct(n_params) < 100 && i_layer >= hifi_rule_n_cut(rule, n_layer, n_params)) {
            return base_type;
        }
        return rule.type == HIFI_TYPE_OF_BASE ? hifi_type_of(base_type) : rule.type;
    }

    return base_type;
}

ggml_type llama_hifi_tensor_type(
        llama_ftype         ftype,
        llama_hifi_role     role,
        const ggml_tensor * tensor,
        const llama_model & model,
        ggml_type           base_type,
        int               & n_fallback) {
    const hifi_recipe * recipe = hifi_find_recipe(ftype);
    if (recipe == nullptr) {
        return base_type;
    }

    const int64_t ncols = tensor->ne[0];

    ggml_type type = hifi_rule_type(*recipe, role, tensor, model.hparams.n_layer_all, model.n_elements(), base_type);
    // a rule whose type the rows cannot take, and for which the recipe names no fallback, keeps the base ftype's choice
    if (!hifi_fits(type, ncols) && hifi_recipe_fallback(*recipe, type, ncols) == GGML_TYPE_COUNT) {
        type = base_type;
    }

    const ggml_type wanted  = type;
    const ggml_type k_quant = hifi_k_quant_of(type);
    bool fallback = false;
    if (!hifi_fits(type, ncols)) {
        const ggml_type to = hifi_recipe_fallback(*recipe, type, ncols);
        if (to == GGML_TYPE_COUNT) {
            return base_type; // tensor_type_fallback handles it as upstream does
        }
        type     = to;
        fallback = true;
    }

    // a recipe only adds bits to upstream's choice, so its architecture and MoE rules are kept; a recipe's fallback
    // may replace upstream's fallback type, whatever its size
    if (type != base_type && hifi_bpw(type) < hifi_bpw(hifi_fits(base_type, ncols) ? base_type : hifi_upstream_fallback(base_type)) &&
        !(fallback && hifi_base_is_fallback(model, role, k_quant, base_type))) {
        return base_type;
    }

    if (fallback) {
        ++n_fallback;
        LLAMA_LOG_WARN("warning: %-36s - ncols %6" PRId64 " not divisible by %3" PRId64 " (required for type %7s) "
                "-> falling back to %7s (%s)\n", ggml_get_name(tensor), ncols, ggml_blck_size(wanted),
                ggml_type_name(wanted), ggml_type_name(type), recipe->name);
    }
    return type;
}

void llama_hifi_log_recipe(llama_ftype ftype, const llama_model & model) {
    const hifi_recipe * recipe = hifi_find_recipe(ftype);
    if (recipe == nullptr) {
        return;
    }

    const int      n_layer  = model.hparams.n_layer_all;
    const uint64_t n_params = model.n_elements();

    LLAMA_LOG_INFO("%s: %s for %" PRIu64 " parameters (%.2f B), %d layers; other tensors as %s\n",
            __func__, recipe->name, n_params, n_params*1e-9, n_layer, recipe->base_name);

    for (int i = 0; i < HIFI_MAX_RULES && recipe->rules[i].role != LLAMA_HIFI_ROLE_OTHER; ++i) {
        const hifi_rule & rule = recipe->rules[i];
        const int pct = rule.layer_pct(n_params);
        const char * of_base = rule.type == HIFI_TYPE_OF_BASE ? " of the base type" : "";
        if (rule.role == LLAMA_HIFI_ROLE_OUTPUT || rule.role == LLAMA_HIFI_ROLE_TOKEN_EMBD || pct >= 100) {
            LLAMA_LOG_INFO("%s:   %-11s -> %s%s\n", __func__, hifi_role_name(rule.role), hifi_rule_type_name(rule), of_base);
        } else {
            const int n_cut = hifi_rule_n_cut(rule, n_layer, n_params);
            if (n_cut > 0) {
                LLAMA_LOG_INFO("%s:   %-11s -> %s%s on layers 0-%d (%d%% of %d)\n", __func__,
                        hifi_role_name(rule.role), hifi_rule_type_name(rule), of_base, n_cut - 1, pct, n_layer);
            } else {
                LLAMA_LOG_INFO("%s:   %-11s -> %s%s on no layer (%d%% of %d)\n", __func__,
                        hifi_role_name(rule.role), hifi_rule_type_name(rule), of_base, pct, n_layer);
            }
        }
    }
    for (int i = 0; i < HIFI_MAX_FALLBACKS && recipe->fallbacks[i].from != GGML_TYPE_F32; ++i) {
        const hifi_fallback & fallback = recipe->fallbacks[i];
        LLAMA_LOG_INFO("%s:   rows that %s cannot take -> %s (instead of %s)\n", __func__,
                ggml_type_name(fallback.from), ggml_type_name(fallback.to),
                ggml_type_name(hifi_upstream_fallback(fallback.from)));
    }
    LLAMA_LOG_INFO("%s:   where upstream's rules give a tensor more bits per weight, their type is kept\n", __func__);
}
