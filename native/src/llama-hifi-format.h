#pragma once

#include "ggml.h"

#include <cstdint>

struct gguf_context;

//
// the HIFI format version: a GGUF key written in every file with HIFI tensors
//
// The HIFI type ids (ggml.h) are not upstream's, so a file with HIFI tensors says which HIFI format it holds.
// A build refuses a version it does not know, and a HIFI-typed tensor in a file without the key: such a
// file was not written by a HIFI-enabled llama.cpp, and its type ids may mean something else.
//

#define LLAMA_HIFI_KEY_FORMAT_VERSION "hifi.format_version"

// the version this build writes and reads; a change of the HIFI block layouts or type ids takes a new one
#define LLAMA_HIFI_FORMAT_VERSION 1

// true for the HIFI types (GGML_TYPE_Q3_K_HIFI .. GGML_TYPE_Q6_K_HIFI)
bool llama_hifi_is_type(ggml_type type);

// set the key in a file to be written (has_hifi), or remove one copied from the input (!has_hifi)
void llama_hifi_set_format(gguf_context * ctx, bool has_hifi);

// throws std::runtime_error naming fname when the file has a format version this build does not know, a key
// that is not a u32, or a HIFI-typed tensor and no key
void llama_hifi_check_format(const gguf_context * ctx, const char * fname);
