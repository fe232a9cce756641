#pragma once

#include <cstdint>
#include <string>

//
// llama-quantize --hifi: pick a HIFI ftype from the model's parameter count
//
//   parameters <= 2e9  : small  -> Q3_K_HIFI
//   parameters <= 1e10 : medium -> Q4_K_XM (stock types only)
//   larger             : large  -> Q4_K_HIFI_L
//
// --hifi-scale small|medium|large overrides the choice.
//

enum quantize_hifi_scale {
    QUANTIZE_HIFI_SCALE_AUTO,
    QUANTIZE_HIFI_SCALE_SMALL,
    QUANTIZE_HIFI_SCALE_MEDIUM,
    QUANTIZE_HIFI_SCALE_LARGE,
};

// "small", "medium" or "large"; false for anything else
bool quantize_hifi_parse_scale(const char * name, quantize_hifi_scale & scale);

// the scale of a model with n_params parameters
quantize_hifi_scale quantize_hifi_scale_for(int64_t n_params);

// the name of a scale's ftype in llama-quantize's type list
const char * quantize_hifi_ftype_name(quantize_hifi_scale scale);

// whether a command-line argument is a non-negative number (nthreads)
bool quantize_hifi_is_number(const char * arg);

// sum of the element counts of the model's tensors, over all splits of a split model
// only the GGUF headers are read; returns -1 (and prints why) on error
int64_t quantize_hifi_count_params(const std::string & fname);

// count the parameters of fname, pick the scale (or take the override) and log both
// returns false (and prints why) when the model cannot be read
bool quantize_hifi_choose(const std::string & fname, quantize_hifi_scale override_scale, quantize_hifi_scale & scale);
