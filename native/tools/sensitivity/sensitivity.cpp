// llama-sensitivity: per-tensor KL divergence sweeps
//
// Loads a reference model once with writable weights, computes the reference next-token
// distributions on a short text once (the top --top-k tokens of each scored position and the mass
// of the rest), then for each (tensor, type) pair quantizes that tensor to the type, puts the
// quantized bytes in place under that type (the graph then computes what a file with only this
// tensor quantized computes), measures the KL divergence of the model's output against the
// reference and restores the original weights. No model file is written per candidate.
//
// One JSON line per finished pair goes to stdout; progress and logs go to stderr. With --pairs -, the pairs
// are read from stdin one per line and each is measured as soon as its line is in (a long-lived worker: the
// model is loaded and the reference computed once); the tool exits on end of input.
//
// With --source F16.gguf the loaded model (-m) may be a quantized baseline, Q8_0 say, about half the F16's memory:
// each swept tensor's values are then read from the source file, one tensor at a time, and quantized to the
// candidate type in place of the baseline's bytes. The reference distributions must then be those of the source
// model: --reference-out writes them to a file after the reference pass (a run on the F16 model, where it fits),
// --reference-in reads them instead of running that pass. A pair then measures "the baseline everywhere, this
// tensor in the candidate type" against the source model.
//
// The weights may live on an offload device (-ngl, --device): a tensor is read and written with
// ggml_backend_tensor_get/set, which works on any buffer whose layout is ggml's own (not a repacked or
// split buffer type, which are refused).

#include "llama.h"
#include "llama-cpp.h"
#include "common.h"
#include "imatrix-loader.h"

#include "../../src/llama-model.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml-cpp.h"
#include "gguf.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cfloat>
#include <cinttypes>
#include <climits>
#include <clocale>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#if defined(_MSC_VER)
#pragma warning(disable: 4244 4267) // possible loss of data
#endif

struct sensitivity_params {
    std::string model;
    std::string text;
    std::string pairs;
    std::string imatrix;
    std::string source;              // --source: the swept tensors' values come from this file (F32/F16/BF16)
    std::string reference_in;        // --reference-in: the reference distributions, read instead of computed
    std::string reference_out;       // --reference-out: write the reference distributions to this file
    std::string devices;             // --device: comma-separated offload devices, or none; empty = all available
    int32_t     n_gpu_layers = 0;    // -ngl: layers stored on the offload devices (-1 = all)
    int32_t     n_ctx       = 256;
    int32_t     n_chunks    = 2;
    int32_t     n_threads   = 0;     // 0 = hardware concurrency
    int32_t     n_top       = 64;    // reference tokens kept per position, 0 = the whole vocabulary
    int32_t     n_samp      = 64;    // tail tokens sampled per position for the tail's divergence, 0 = none
    bool        all_pos     = false; // score every position, not only the second half of each chunk
    bool        verbose     = false;
};

struct sensitivity_pair {
    std::string   name;
    ggml_tensor * tensor;
    ggml_type     type;
    size_t        nbytes; // the tensor's exact size in this type
    int64_t       source_id; // with --source: the tensor's id in the source file, else -1
};

// the reference distribution of every scored position, in O(n_top) per position
// the n_top most likely tokens T keep their log-probabilities, the others are one outcome, the tail R,
// with its mass P(R); the candidate's KL divergence is that of the two distributions over T + {R}:
//   KL_T(P || Q) = sum_{i in T} p_i (log p_i - log q_i) + P(R) log(P(R)/Q(R))
// it is a lower bound of KL(P || Q), short by exactly P(R) KL(P(.|R) || Q(.|R)) (docs/sensitivity.md);
// with n_top = n_vocab, R is empty and the result the full KL divergence. Identical logits give exactly 0
// the shortfall P(R) KL(P(.|R) || Q(.|R)) is estimated without bias from n_samp tokens drawn from P(.|R):
//   KL(P(.|R) || Q(.|R)) = E_{i ~ P(.|R)} [ r_i - 1 - log r_i ],  r_i = Q(i|R)/P(i|R)
// (E[r_i - 1] = 0), each term >= 0; with n_samp = 0 the figure is the lower bound KL_T
struct sensitivity_reference {
    int64_t              n_vocab = 0;
    int64_t              n_top   = 0;
    std::vector<int32_t> idx;     // [n_pos][n_top] the tokens of T, ascending
    std::vector<double>  logp;    // [n_pos][n_top] their log-probabilities
    std::vector<double>  tail;    // [n_pos] P(R)
    std::vector<int32_t> top;     // [n_pos] argmax_i l_i
    int64_t              n_samp  = 0;
    std::vector<int32_t> samp;    // [n_pos][n_samp] tail tokens drawn from P(.|R)
    std::vector<double>  samp_logp; // [n_pos][n_samp] their log-probabilities
};

struct sensitivity_stats {
    double sum_kld    = 0.0;
    double sum_kld2   = 0.0;
    size_t n_same_top = 0;
    size_t count      = 0;
};

static void sensitivity_print_usage(const char * argv0) {
    sensitivity_params params;
    fprintf(stderr, "usage: %s -m REF.gguf -f TEXT --pairs PAIRS.tsv|- [options]\n", argv0);
    fprintf(stderr, "       %s -m BASELINE.gguf --source REF.gguf --reference-in REF.bin -f TEXT --pairs PAIRS.tsv|- [options]\n", argv0);
    fprintf(stderr, "\n");
    fprintf(stderr, "For each line 'tensor<TAB>type' of PAIRS.tsv, quantize -> dequantize that tensor of the reference\n");
    fprintf(stderr, "model to the type, measure the KL divergence of the output against the reference, restore it,\n");
    fprintf(stderr, "and print one JSON line to stdout.\n");
    fprintf(stderr, "\n");
    fprintf(stderr, "options:\n");
    fprintf(stderr, "  -h, --help            show this help message and exit\n");
    fprintf(stderr, "  -m, --model FNAME     reference model (tensors stored as F32, F16 or BF16); with --source, the\n");
    fprintf(stderr, "                        baseline whose swept tensors are replaced (quantized, e.g. Q8_0, or not)\n");
    fprintf(stderr, "  --source FNAME        read each swept tensor's values from this GGUF (tensors stored as F32, F16\n");
    fprintf(stderr, "                        or BF16, the same names and shapes as -m) instead of the loaded model;\n");
    fprintf(stderr, "                        needs --reference-in (the reference of this source model)\n");
    fprintf(stderr, "  --reference-out FNAME write the reference distributions to FNAME after the reference pass\n");
    fprintf(stderr, "                        (with an empty pairs file, that is all the run does)\n");
    fprintf(stderr, "  --reference-in FNAME  read the reference distributions from FNAME (written by --reference-out\n");
    fprintf(stderr, "                        with the same text, -c, --chunks, positions, --top-k and --tail-samples)\n");
    fprintf(stderr, "                        instead of computing them from the loaded model\n");
    fprintf(stderr, "  -f, --file FNAME      text to evaluate on\n");
    fprintf(stderr, "  --pairs FNAME         pairs to measure, one 'tensor<TAB>type' per line (ggml type names);\n");
    fprintf(stderr, "                        - reads them from stdin, each measured as its line arrives, until end of input\n");
    fprintf(stderr, "  -c, --ctx-size N      tokens per chunk (default: %d)\n", params.n_ctx);
    fprintf(stderr, "  --chunks N            number of chunks (default: %d)\n", params.n_chunks);
    fprintf(stderr, "  --all-positions       score every position but the last of each chunk (every token after the first)\n");
    fprintf(stderr, "                        (default: the positions from ctx/2 on, as llama-perplexity --kl-divergence does)\n");
    fprintf(stderr, "  --top-k N             reference tokens kept per position, the rest pooled into one tail\n");
    fprintf(stderr, "                        (default: %d; 0 = the whole vocabulary, exact but n_vocab x 12 bytes per position)\n", params.n_top);
    fprintf(stderr, "  --tail-samples N      tail tokens drawn per position to estimate the tail's divergence\n");
    fprintf(stderr, "                        (default: %d; 0 = none: the result is a lower bound)\n", params.n_samp);
    fprintf(stderr, "  --imatrix FNAME       importance matrix (GGUF or legacy .dat) passed to the quantizer\n");
    fprintf(stderr, "  -t, --threads N       number of threads (default: all cores)\n");
    fprintf(stderr, "  -ngl, --gpu-layers, --n-gpu-layers N\n");
    fprintf(stderr, "                        layers to store on the offload devices, a number or 'all' (default: %d:\n", params.n_gpu_layers);
    fprintf(stderr, "                        every weight in host memory, computed on the CPU)\n");
    fprintf(stderr, "  -dev, --device <dev1,dev2,..>\n");
    fprintf(stderr, "                        comma-separated list of devices to offload to (none = don't offload)\n");
    fprintf(stderr, "  --list-devices        print the list of available devices and exit\n");
    fprintf(stderr, "  -v, --verbose         show the llama.cpp log\n");
}

static bool sensitivity_verbose = false;

static void sensitivity_log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (sensitivity_verbose || level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
        fflush(stderr);
    }
}

// case-insensitive comparison, portable (no POSIX-only function)
static bool sensitivity_striequals(const char * a, const char * b) {
    for (; *a && *b; ++a, ++b) {
        if (std::tolower((unsigned char) *a) != std::tolower((unsigned char) *b)) {
            return false;
        }
    }
    return *a == *b;
}

static ggml_type sensitivity_parse_type(const std::string & name) {
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        const ggml_type type = (ggml_type) i;
        const char * type_name = ggml_type_name(type);
        if (type_name && sensitivity_striequals(name.c_str(), type_name)) {
            return type;
        }
    }
    return GGML_TYPE_COUNT;
}

// a type ggml_quantize_chunk can write and the CPU backend can multiply and read rows of
static bool sensitivity_type_supported(ggml_type type) {
    if (type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16) {
        return true;
    }
    const ggml_type_traits     * traits     = ggml_get_type_traits(type);
    const ggml_type_traits_cpu * traits_cpu = ggml_get_type_traits_cpu(type);
    return traits->is_quantized && traits->blck_size > 0 && traits->type_size > 0 && traits->to_float != nullptr &&
           traits_cpu->vec_dot != nullptr && type != GGML_TYPE_Q8_1 && type != GGML_TYPE_Q8_K;
}

static bool sensitivity_storage_supported(ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

// the offload devices of this build, "CUDA0, CUDA1" (the CPU is not one)
static std::string sensitivity_device_names() {
    std::string names;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
            names += (names.empty() ? "" : ", ") + std::string(ggml_backend_dev_name(dev));
        }
    }
    return names.empty() ? "none in this build" : names;
}

static void sensitivity_list_devices() {
    printf("Available devices:\n");
    size_t n = 0;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
            continue;
        }
        size_t free  = 0;
        size_t total = 0;
        ggml_backend_dev_memory(dev, &free, &total);
        printf("  %s: %s (%zu MiB, %zu MiB free)\n", ggml_backend_dev_name(dev), ggml_backend_dev_description(dev),
                total/(1024*1024), free/(1024*1024));
        ++n;
    }
    if (n == 0) {
        printf("  none (this build offloads to no device)\n");
    }
}

// --device as llama.cpp's tools read it: "none", or offload device names separated by commas;
// out is the nullptr-terminated list of llama_model_params.devices
static bool sensitivity_parse_devices(const std::string & value, std::vector<ggml_backend_dev_t> & out) {
    out.clear();
    if (value == "none") {
        out.push_back(nullptr);
        return true;
    }
    std::stringstream ss(value);
    std::string name;
    while (std::getline(ss, name, ',')) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
        if (dev == nullptr) {
            fprintf(stderr, "error: --device: unknown device '%s' (offload devices: %s; or none)\n", name.c_str(),
                    sensitivity_device_names().c_str());
            return false;
        }
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
            fprintf(stderr, "error: --device: '%s' is the CPU, not an offload device (--device none keeps every "
                    "weight on the CPU)\n", name.c_str());
            return false;
        }
        out.push_back(dev);
    }
    if (out.empty()) {
        fprintf(stderr, "error: --device needs a list of devices, or none\n");
        return false;
    }
    out.push_back(nullptr);
    return true;
}

// the type and contiguous strides of a tensor stored as `type`
static void sensitivity_set_type(ggml_tensor * t, ggml_type type) {
    t->type  = type;
    t->nb[0] = ggml_type_size(type);
    t->nb[1] = ggml_row_size(type, t->ne[0]);
    for (int i = 2; i < GGML_MAX_DIMS; ++i) {
        t->nb[i] = t->nb[i - 1]*t->ne[i - 1];
    }
}

// whether the tensor's buffer holds its bytes in ggml's own layout, so that another type's bytes can be put in
// place: host memory or a device's default buffer type. Not a repacked buffer (CPU_REPACK, AMX: their own
// layout, made when the tensor is set), nor a split one (rows over several devices), which both keep a
// per-tensor extra built for the tensor's type
static bool sensitivity_buffer_swappable(const ggml_tensor * t) {
    if (t->buffer == nullptr || t->extra != nullptr || t->view_src != nullptr) {
        return false;
    }
    ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(t->buffer);
    if (ggml_backend_buft_is_host(buft)) {
        return true;
    }
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    return dev != nullptr && ggml_backend_dev_buffer_type(dev) == buft;
}

// the bytes a candidate of `type` takes in the tensor's buffer: its size plus the buffer's padding (CUDA pads a
// quantized tensor's last row to a multiple of 512 values and expects that padding zeroed)
static size_t sensitivity_alloc_size(const ggml_tensor * t, ggml_type type) {
    ggml_tensor cand = *t;
    sensitivity_set_type(&cand, type);
    return ggml_backend_buffer_get_alloc_size(t->buffer, &cand);
}

// a JSON string literal; names read from user files may be invalid UTF-8, which is replaced, not thrown
static std::string sensitivity_json_string(const std::string & s) {
    return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// run fn(i) for i in [0, n) on n_threads threads, in contiguous slices; the first exception a worker
// throws (std::bad_alloc, say) is rethrown here once every worker has finished
template <typename F>
static void sensitivity_parallel_for(int64_t n, int n_threads, const F & fn) {
    n_threads = (int) std::max<int64_t>(1, std::min<int64_t>(n_threads, n));
    std::exception_ptr error;
    std::mutex         error_mutex;
    auto run = [&fn, &error, &error_mutex](int64_t i0, int64_t i1) {
        try {
            for (int64_t i = i0; i < i1; ++i) {
                fn(i);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) {
                error = std::current_exception();
            }
        }
    };
    std::vector<std::thread> workers;
    const int64_t per_thread = (n + n_threads - 1) / n_threads;
    for (int t = 1; t < n_threads; ++t) {
        const int64_t i0 = t*per_thread;
        const int64_t i1 = std::min(n, i0 + per_thread);
        if (i0 >= i1) {
            break;
        }
        try {
            workers.emplace_back(run, i0, i1);
        } catch (...) {
            // no thread to spare: this thread does the slice itself
            run(i0, i1);
        }
    }
    run(0, std::min(n, per_thread));
    for (auto & w : workers) {
        w.join();
    }
    if (error) {
        std::rethrow_exception(error);
    }
}

// log(sum(exp(logits))), the argmax and the probability of the tokens not in idx[0 .. n_idx) (ascending)
// the reference and the candidate go through this same code, so identical logits give identical results
static double sensitivity_log_sum_exp(const float * logits, int64_t n_vocab, const int32_t * idx, int64_t n_idx,
        int32_t & imax, double & tail) {
    float max_logit = logits[0];
    imax = 0;
    for (int64_t i = 1; i < n_vocab; ++i) {
        if (logits[i] > max_logit) {
            max_logit = logits[i];
            imax = (int32_t) i;
        }
    }
    double sum_exp  = 0.0;
    double sum_tail = 0.0;
    int64_t j = 0;
    for (int64_t i = 0; i < n_vocab; ++i) {
        const double e = expf(logits[i] - max_logit);
        sum_exp += e;
        if (j < n_idx && idx[j] == i) {
            ++j;
        } else {
            sum_tail += e;
        }
    }
    tail = sum_tail/sum_exp;
    return max_logit + log(sum_exp);
}

// the n_top most likely tokens, ascending (ties go to the lower id, so the choice is deterministic)
static void sensitivity_top_tokens(const float * logits, int64_t n_vocab, int64_t n_top, std::vector<int32_t> & scratch,
        int32_t * out) {
    if (n_top >= n_vocab) {
        for (int64_t i = 0; i < n_vocab; ++i) {
            out[i] = (int32_t) i;
        }
        return;
    }
    scratch.resize(n_vocab);
    for (int64_t i = 0; i < n_vocab; ++i) {
        scratch[i] = (int32_t) i;
    }
    std::nth_element(scratch.begin(), scratch.begin() + n_top, scratch.end(), [logits](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    std::copy(scratch.begin(), scratch.begin() + n_top, out);
    std::sort(out, out + n_top);
}

// n_samp tokens drawn from P(.|R), R the tokens not in idx (ascending), with their log-probabilities;
// the draws depend only on the seed, so the result does not depend on the thread count
static void sensitivity_sample_tail(const float * logits, int64_t n_vocab, double lse, const int32_t * idx, int64_t n_idx,
        int64_t n_samp, uint64_t seed, std::vector<double> & scratch, int32_t * out, double * out_logp) {
    scratch.resize(n_samp);
    double total = 0.0;
    for (int64_t i = 0, j = 0; i < n_vocab; ++i) {
        if (j < n_idx && idx[j] == i) {
            ++j;
        } else {
            total += exp(logits[i] - lse);
        }
    }
    std::mt19937_64 rng(seed);
    for (auto & u : scratch) {
        u = (double) (rng() >> 11)*0x1.0p-53*total;
    }
    std::sort(scratch.begin(), scratch.end());
    double  cum  = 0.0;
    int64_t s    = 0;
    int32_t last = -1;
    for (int64_t i = 0, j = 0; i < n_vocab && s < n_samp; ++i) {
        if (j < n_idx && idx[j] == i) {
            ++j;
            continue;
        }
        last = (int32_t) i;
        cum += exp(logits[i] - lse);
        for (; s < n_samp && scratch[s] < cum; ++s) {
            out[s]      = last;
            out_logp[s] = logits[i] - lse;
        }
    }
    for (; s < n_samp; ++s) { // rounding left the last draws past the end: the last tail token
        out[s]      = last;
        out_logp[s] = logits[last] - lse;
    }
}

// KL_T(P || Q) of one position plus, with tail samples, the estimate of P(R) KL(P(.|R) || Q(.|R))
// (see sensitivity_reference), from the candidate's log(sum(exp)) and Q(R)
static double sensitivity_kld(const sensitivity_reference & ref, int64_t k, const float * logits, double lse, double tail) {
    const int32_t * idx  = ref.idx.data()  + k*ref.n_top;
    const double  * logp = ref.logp.data() + k*ref.n_top;
    double sum = 0.0;
    for (int64_t j = 0; j < ref.n_top; ++j) {
        sum += exp(logp[j])*(logp[j] - (logits[idx[j]] - lse));
    }
    const double p_tail = ref.tail[k];
    if (p_tail > 0.0) {
        const double log_p_tail = log(p_tail);
        const double log_q_tail = log(std::max(tail, DBL_MIN));
        sum += p_tail*(log_p_tail - log_q_tail);
        if (ref.n_samp > 0) {
            const int32_t * samp      = ref.samp.data()      + k*ref.n_samp;
            const double  * samp_logp = ref.samp_logp.data() + k*ref.n_samp;
            double sum_tail = 0.0;
            for (int64_t s = 0; s < ref.n_samp; ++s) {
                const double log_r = (logits[samp[s]] - lse - log_q_tail) - (samp_logp[s] - log_p_tail);
                sum_tail += expm1(log_r) - log_r;
            }
            sum += p_tail*sum_tail/ref.n_samp;
        }
    }
    return sum;
}

// tokens past the last one a run uses that the head of the text must hold (sensitivity_tokenize_head)
#define SENSITIVITY_HEAD_MARGIN 512

// the tokens of the head of the text that the chunks need, its first n_needed the same as the whole text's:
// tokenizing a whole calibration file costs seconds per MiB with a large vocabulary (16 s for 858 KiB with
// Gemma 3's 262144 tokens, one thread), which every worker of a sweep paid again at its start. The head ends
// after a newline and holds SENSITIVITY_HEAD_MARGIN tokens more than are used: no tokenizer's merges reach
// across that many tokens, so the tokens used do not depend on the cut. It doubles until it holds them, up to
// the whole text (then fewer tokens than needed is the text's own length)
static std::vector<llama_token> sensitivity_tokenize_head(llama_context * ctx, const std::string & text, size_t n_needed,
        size_t & n_bytes) {
    size_t head = 8*(n_needed + SENSITIVITY_HEAD_MARGIN);
    while (true) {
        const size_t nl  = head < text.size() ? text.find('\n', head) : std::string::npos;
        const size_t end = nl == std::string::npos ? text.size() : nl + 1;
        std::vector<llama_token> tokens = common_tokenize(ctx, end == text.size() ? text : text.substr(0, end), true);
        if (end == text.size() || tokens.size() >= n_needed + SENSITIVITY_HEAD_MARGIN) {
            n_bytes = end;
            return tokens;
        }
        head = 2*end;
    }
}

// evaluate every chunk; for each one, hand the logits of its scored positions to on_chunk(chunk, logits, n_pos)
template <typename F>
static bool sensitivity_eval(llama_context * ctx, const std::vector<llama_token> & tokens, int n_ctx, int n_chunks,
        int first, const F & on_chunk) {
    const llama_vocab * vocab = llama_model_get_vocab(llama_get_model(ctx));
    const bool add_bos = llama_vocab_get_add_bos(vocab);
    const int n_pos = n_ctx - 1 - first; // the last position predicts a token outside the chunk

    common_batch batch(ctx);
    for (int c = 0; c < n_chunks; ++c) {
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.clear();
        for (int k = 0; k < n_ctx; ++k) {
            llama_token tok = tokens[(size_t) c*n_ctx + k];
            if (k == 0 && add_bos) {
                tok = llama_vocab_bos(vocab);
            }
            batch.add(tok, k, 0, k >= first && k < n_ctx - 1);
        }
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch.get())) {
            fprintf(stderr, "error: failed to decode chunk %d\n", c);
            return false;
        }
        on_chunk(c, llama_get_logits(ctx), n_pos);
    }
    return true;
}

using sensitivity_tensor_map  = std::unordered_map<std::string, ggml_tensor *>;
using sensitivity_imatrix_map = std::unordered_map<std::string, std::vector<float>>;

// n values stored as type (F32, F16 or BF16) -> float
static void sensitivity_values_to_float(ggml_type type, const void * data, float * out, int64_t n) {
    switch (type) {
        case GGML_TYPE_F32:  memcpy(out, data, n*sizeof(float)); break;
        case GGML_TYPE_F16:  ggml_fp16_to_fp32_row((const ggml_fp16_t *) data, out, n); break;
        case GGML_TYPE_BF16: ggml_bf16_to_fp32_row((const ggml_bf16_t *) data, out, n); break;
        default: GGML_ABORT("unsupported storage type");
    }
}

// "4096x14336", the dimensions a tensor has
static std::string sensitivity_shape(const int64_t * ne) {
    int n_dims = GGML_MAX_DIMS;
    while (n_dims > 1 && ne[n_dims - 1] == 1) {
        --n_dims;
    }
    std::string out;
    for (int i = 0; i < n_dims; ++i) {
        out += (i ? "x" : "") + std::to_string(ne[i]);
    }
    return out;
}

// --source: the file the swept tensors' values are read from, one tensor at a time; a user's file, so its metadata
// is checked before it is used (the name, type and shape of each tensor, and that its bytes lie inside the file)
struct sensitivity_source {
    std::string      fname;
    gguf_context_ptr meta;
    std::ifstream    file;
    uint64_t         file_size = 0;
};

// (opt: the option that named the file, for the messages)
static bool sensitivity_open_source(const std::string & fname, const char * opt, sensitivity_source & src) {
    std::ifstream f(fname, std::ios::binary | std::ios::ate);
    const std::streamoff size = f ? (std::streamoff) f.tellg() : (std::streamoff) -1;
    if (!f || size < 0) {
        fprintf(stderr, "error: %s: cannot open '%s'\n", opt, fname.c_str());
        return false;
    }
    gguf_init_params gparams = { /*.no_alloc =*/ true, /*.ctx =*/ nullptr };
    src.meta.reset(gguf_init_from_file(fname.c_str(), gparams));
    if (!src.meta) {
        fprintf(stderr, "error: %s: '%s' is not a readable GGUF file\n", opt, fname.c_str());
        return false;
    }
    src.fname     = fname;
    src.file      = std::move(f);
    src.file_size = (uint64_t) size;
    return true;
}

// where tensor `id` of the source starts in its file, and its size; false if it does not lie inside the file
static bool sensitivity_source_extent(const sensitivity_source & src, int64_t id, uint64_t & offset, uint64_t & nbytes) {
    const uint64_t data_offset   = gguf_get_data_offset(src.meta.get());
    const uint64_t tensor_offset = gguf_get_tensor_offset(src.meta.get(), id);
    if (tensor_offset > UINT64_MAX - data_offset) {
        return false;
    }
    offset = data_offset + tensor_offset;
    nbytes = gguf_get_tensor_size(src.meta.get(), id);
    return offset <= src.file_size && nbytes <= src.file_size - offset;
}

// the source tensor of the loaded tensor t: its id, once its type, shape and extent are checked; -1 (and one error
// line naming `at`) when it cannot be used
static int64_t sensitivity_source_tensor(const sensitivity_source & src, const char * at, const std::string & name,
        const ggml_tensor * t) {
    const char * fname = src.fname.c_str();
    const int64_t id = gguf_find_tensor(src.meta.get(), name.c_str());
    if (id < 0) {
        fprintf(stderr, "error: %s: the source '%s' has no tensor '%s'\n", at, fname, name.c_str());
        return -1;
    }
    const ggml_type type = gguf_get_tensor_type(src.meta.get(), id);
    if (!sensitivity_storage_supported(type)) {
        fprintf(stderr, "error: %s: tensor '%s' of the source '%s' is stored as %s; the source must be F32, F16 or BF16\n",
                at, name.c_str(), fname, ggml_type_name(type));
        return -1;
    }
    const int64_t * ne = gguf_get_tensor_ne(src.meta.get(), id);
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        if (ne[i] != t->ne[i]) {
            fprintf(stderr, "error: %s: tensor '%s' is %s in the source '%s' but %s in the model\n", at, name.c_str(),
                    sensitivity_shape(ne).c_str(), fname, sensitivity_shape(t->ne).c_str());
            return -1;
        }
    }
    uint64_t offset = 0;
    uint64_t nbytes = 0;
    if (!sensitivity_source_extent(src, id, offset, nbytes)) {
        fprintf(stderr, "error: %s: tensor '%s' of the source '%s' lies past the end of the file (%" PRIu64 " bytes)\n",
                at, name.c_str(), fname, src.file_size);
        return -1;
    }
    return id;
}

// the values of source tensor `id` (checked by sensitivity_source_tensor) as float, read in slices
static bool sensitivity_source_read(sensitivity_source & src, int64_t id, const std::string & name, int64_t n,
        std::vector<float> & out) {
    const ggml_type type = gguf_get_tensor_type(src.meta.get(), id);
    uint64_t offset = 0;
    uint64_t nbytes = 0;
    GGML_ASSERT(sensitivity_source_extent(src, id, offset, nbytes) && nbytes == (uint64_t) n*ggml_type_size(type));
    out.resize(n);
    const size_t  type_size = ggml_type_size(type);
    const int64_t per_read  = (int64_t) ((16u << 20)/type_size);
    std::vector<char> buf((size_t) std::min<int64_t>(per_read, n)*type_size);
    src.file.clear();
    src.file.seekg((std::streamoff) offset);
    for (int64_t i0 = 0; i0 < n; i0 += per_read) {
        const int64_t m = std::min(per_read, n - i0);
        if (!src.file.read(buf.data(), (std::streamsize) (m*type_size))) {
            fprintf(stderr, "error: failed to read tensor '%s' from the source '%s'\n", name.c_str(), src.fname.c_str());
            return false;
        }
        sensitivity_values_to_float(type, buf.data(), out.data() + i0, m);
    }
    return true;
}

// the reference distributions in a file (--reference-out, --reference-in), in the writing host's byte order:
//   header:  magic "HKSREF\0\0", uint32 format version, uint32 scored positions (0: from ctx/2 on, 1: all),
//            int64 n_vocab, ctx, chunks, top-k, tail samples, scored positions in all (n_total),
//            uint64 FNV-1a 64 of the evaluated tokens (int32 each), uint64 fingerprint of the reference model
//            (sensitivity_model_fingerprint), uint64 FNV-1a 64 of the payload
//   payload: idx int32 [n_total][top-k], logp f64 [n_total][top-k], tail f64 [n_total], top int32 [n_total],
//            samp int32 [n_total][tail samples], samp_logp f64 [n_total][tail samples]
static const char     sensitivity_ref_magic[8] = { 'H', 'K', 'S', 'R', 'E', 'F', '\0', '\0' };
static const uint32_t sensitivity_ref_version  = 2;

struct sensitivity_ref_header {
    char     magic[8];
    uint32_t version;
    uint32_t all_pos;
    int64_t  n_vocab;
    int64_t  n_ctx;
    int64_t  n_chunks;
    int64_t  n_top;
    int64_t  n_samp;
    int64_t  n_total;
    uint64_t tokens_hash;
    uint64_t model_hash;
    uint64_t data_hash;
};
static_assert(sizeof(sensitivity_ref_header) == 88, "the header has no padding");

static uint64_t sensitivity_fnv1a(const void * data, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
    const uint8_t * p = (const uint8_t *) data;
    for (size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

// bytes of each tensor's data that the model's fingerprint covers
#define SENSITIVITY_FINGERPRINT_BYTES 4096

// a fingerprint of the model whose reference distributions a reference file holds: the FNV-1a 64 of each
// tensor's name, type and shape and of the first SENSITIVITY_FINGERPRINT_BYTES of its data, in file order. Not
// the whole file (a 70B model in F16 is 140 GB, which every worker would read at its start), but enough to tell
// two models, or two conversions of one, apart: a reference of another model would give a wrong KLD for every
// pair without any other field of the header differing. false (and one error line) if the file cannot be read
static bool sensitivity_model_fingerprint(sensitivity_source & src, uint64_t & hash) {
    const char *  at        = src.fname.c_str();
    const int64_t n_tensors = gguf_get_n_tensors(src.meta.get());
    std::vector<char> buf(SENSITIVITY_FINGERPRINT_BYTES);
    hash = sensitivity_fnv1a(&n_tensors, sizeof(n_tensors));
    for (int64_t id = 0; id < n_tensors; ++id) {
        const char *    name   = gguf_get_tensor_name(src.meta.get(), id);
        const int32_t   type   = gguf_get_tensor_type(src.meta.get(), id);
        const int64_t * ne     = gguf_get_tensor_ne(src.meta.get(), id);
        uint64_t offset = 0;
        uint64_t nbytes = 0;
        if (!sensitivity_source_extent(src, id, offset, nbytes)) {
            fprintf(stderr, "error: tensor '%s' of '%s' lies past the end of the file (%" PRIu64 " bytes)\n", name, at,
                    src.file_size);
            return false;
        }
        const size_t n = (size_t) std::min<uint64_t>(nbytes, buf.size());
        src.file.clear();
        src.file.seekg((std::streamoff) offset);
        if (!src.file.read(buf.data(), (std::streamsize) n)) {
            fprintf(stderr, "error: failed to read tensor '%s' of '%s'\n", name, at);
            return false;
        }
        hash = sensitivity_fnv1a(name, strlen(name), hash);
        hash = sensitivity_fnv1a(&type, sizeof(type), hash);
        hash = sensitivity_fnv1a(ne, GGML_MAX_DIMS*sizeof(int64_t), hash);
        hash = sensitivity_fnv1a(buf.data(), n, hash);
    }
    return true;
}

// the payload's arrays, in file order
static std::vector<std::pair<void *, size_t>> sensitivity_ref_arrays(sensitivity_reference & ref) {
    return {
        { ref.idx.data(),       ref.idx.size()*sizeof(int32_t)      },
        { ref.logp.data(),      ref.logp.size()*sizeof(double)      },
        { ref.tail.data(),      ref.tail.size()*sizeof(double)      },
        { ref.top.data(),       ref.top.size()*sizeof(int32_t)      },
        { ref.samp.data(),      ref.samp.size()*sizeof(int32_t)     },
        { ref.samp_logp.data(), ref.samp_logp.size()*sizeof(double) },
    };
}

// --reference-out: the file is opened (as FNAME.tmp) before any work, so that an unwritable path fails at once,
// and renamed to FNAME once complete; a run that fails before leaves no file
struct sensitivity_ref_writer {
    std::string fname;
    std::string tmp;
    FILE *      f = nullptr;

    bool open(const std::string & name) {
        fname = name;
        tmp   = name + ".tmp";
        f     = fopen(tmp.c_str(), "wb");
        if (f == nullptr) {
            fprintf(stderr, "error: --reference-out: cannot write '%s': %s\n", tmp.c_str(), strerror(errno));
            return false;
        }
        return true;
    }

    bool commit(sensitivity_ref_header hdr, sensitivity_reference & ref) {
        const auto arrays = sensitivity_ref_arrays(ref);
        hdr.data_hash = 0xcbf29ce484222325ull;
        for (const auto & a : arrays) {
            hdr.data_hash = sensitivity_fnv1a(a.first, a.second, hdr.data_hash);
        }
        bool ok = fwrite(&hdr, sizeof(hdr), 1, f) == 1;
        for (const auto & a : arrays) {
            ok = ok && (a.second == 0 || fwrite(a.first, a.second, 1, f) == 1);
        }
        ok = fflush(f) == 0 && ok;
        ok = fclose(f) == 0 && ok;
        f = nullptr;
#if defined(_WIN32)
        std::remove(fname.c_str()); // rename does not replace a file there
#endif
        if (!ok || std::rename(tmp.c_str(), fname.c_str()) != 0) {
            fprintf(stderr, "error: --reference-out: failed to write '%s': %s\n", fname.c_str(), strerror(errno));
            std::remove(tmp.c_str());
            return false;
        }
        tmp.clear();
        return true;
    }

    ~sensitivity_ref_writer() {
        if (f != nullptr) {
            fclose(f);
        }
        if (!tmp.empty()) {
            std::remove(tmp.c_str());
        }
    }
};

// --reference-in: the reference written for the run that `want` describes (every field but data_hash; model_hash
// that of `model`), into ref (sized by the caller); any difference, a wrong size or a changed byte is one error line
static bool sensitivity_read_reference(const std::string & fname, const sensitivity_ref_header & want,
        const std::string & model, sensitivity_reference & ref) {
    const char * at = fname.c_str();
    std::ifstream f(fname, std::ios::binary | std::ios::ate);
    const std::streamoff end = f ? (std::streamoff) f.tellg() : (std::streamoff) -1;
    if (!f || end < 0) {
        fprintf(stderr, "error: --reference-in: cannot open '%s'\n", at);
        return false;
    }
    const uint64_t size = (uint64_t) end;
    sensitivity_ref_header hdr;
    memset(&hdr, 0, sizeof(hdr));
    const size_t n_head = (size_t) std::min<uint64_t>(size, sizeof(hdr));
    f.seekg(0);
    if (!f.read((char *) &hdr, (std::streamsize) n_head)) {
        fprintf(stderr, "error: --reference-in: failed to read '%s'\n", at);
        return false;
    }
    if (memcmp(hdr.magic, sensitivity_ref_magic, std::min(n_head, sizeof(hdr.magic))) != 0) {
        fprintf(stderr, "error: --reference-in: '%s' is not a llama-sensitivity reference file (bad magic)\n", at);
        return false;
    }
    if (n_head < sizeof(hdr)) {
        fprintf(stderr, "error: --reference-in: '%s' is truncated: %" PRIu64 " bytes, shorter than its %zu-byte header\n",
                at, size, sizeof(hdr));
        return false;
    }
    if (hdr.version != want.version) {
        fprintf(stderr, "error: --reference-in: '%s' has format version %u, this tool reads version %u\n", at,
                hdr.version, want.version);
        return false;
    }
    struct field { const char * what; int64_t got; int64_t expected; };
    const field fields[] = {
        { "a vocabulary of n tokens",           hdr.n_vocab,  want.n_vocab  },
        { "-c",                                 hdr.n_ctx,    want.n_ctx    },
        { "--chunks",                           hdr.n_chunks, want.n_chunks },
        { "--all-positions (1) or not (0)",     hdr.all_pos,  want.all_pos  },
        { "the top-k tokens kept per position", hdr.n_top,    want.n_top    },
        { "--tail-samples",                     hdr.n_samp,   want.n_samp   },
        { "scored positions in all",            hdr.n_total,  want.n_total  },
    };
    for (const field & fd : fields) {
        if (fd.got != fd.expected) {
            fprintf(stderr, "error: --reference-in: '%s' was written for %s = %" PRId64 ", this run has %" PRId64 "\n",
                    at, fd.what, fd.got, fd.expected);
            return false;
        }
    }
    if (hdr.tokens_hash != want.tokens_hash) {
        fprintf(stderr, "error: --reference-in: '%s' was written for another text or tokenizer (token hash %016" PRIx64
                ", this run's %016" PRIx64 ")\n", at, hdr.tokens_hash, want.tokens_hash);
        return false;
    }
    if (hdr.model_hash != want.model_hash) {
        fprintf(stderr, "error: --reference-in: '%s' was written for another model (fingerprint %016" PRIx64 ", this "
                "run's %s has %016" PRIx64 ")\n", at, hdr.model_hash, model.c_str(), want.model_hash);
        return false;
    }
    const auto arrays = sensitivity_ref_arrays(ref);
    uint64_t payload = 0;
    for (const auto & a : arrays) {
        payload += a.second;
    }
    if (size != sizeof(hdr) + payload) {
        fprintf(stderr, "error: --reference-in: '%s' is %s: %" PRIu64 " bytes, its header says %" PRIu64 "\n", at,
                size < sizeof(hdr) + payload ? "truncated" : "longer than its header says", size, sizeof(hdr) + payload);
        return false;
    }
    uint64_t hash = 0xcbf29ce484222325ull;
    for (const auto & a : arrays) {
        if (a.second > 0 && !f.read((char *) a.first, (std::streamsize) a.second)) {
            fprintf(stderr, "error: --reference-in: failed to read '%s'\n", at);
            return false;
        }
        hash = sensitivity_fnv1a(a.first, a.second, hash);
    }
    if (hash != hdr.data_hash) {
        fprintf(stderr, "error: --reference-in: '%s' is corrupted (its data does not match the hash in its header)\n", at);
        return false;
    }
    // the token ids index the logits: each one is checked, whatever the hash says
    const int64_t n_vocab = want.n_vocab;
    auto in_vocab = [n_vocab](int32_t id) { return id >= 0 && id < n_vocab; };
    bool ok = std::all_of(ref.top.begin(), ref.top.end(), in_vocab) && std::all_of(ref.samp.begin(), ref.samp.end(), in_vocab);
    for (int64_t k = 0; ok && k < want.n_total; ++k) {
        const int32_t * idx = ref.idx.data() + k*ref.n_top;
        for (int64_t i = 0; ok && i < ref.n_top; ++i) {
            ok = in_vocab(idx[i]) && (i == 0 || idx[i] > idx[i - 1]);
        }
        ok = ok && ref.tail[k] >= 0.0 && ref.tail[k] <= 1.0;
    }
    if (!ok) {
        fprintf(stderr, "error: --reference-in: '%s' is corrupted (a token id out of range or a tail mass outside [0, 1])\n", at);
        return false;
    }
    return true;
}

// one line 'tensor<TAB>type' -> pair; false (and one error line naming `where`) for anything that cannot be measured
// with a source, the tensor's values come from it: the loaded tensor may be of any type, and every candidate's bytes
// go in its place (none may need more room than the loaded tensor holds)
static bool sensitivity_parse_pair(const std::string & line, const std::string & where, const sensitivity_tensor_map & tensors,
        const sensitivity_imatrix_map & imatrix, const sensitivity_source * source, sensitivity_pair & pair) {
    const char * at = where.c_str();
    const size_t tab = line.find('\t');
    if (tab == std::string::npos || line.find('\t', tab + 1) != std::string::npos) {
        fprintf(stderr, "error: %s: expected 'tensor<TAB>type', got '%s'\n", at, line.c_str());
        return false;
    }
    const std::string name      = line.substr(0, tab);
    const std::string type_name = line.substr(tab + 1);

    const auto it = tensors.find(name);
    if (it == tensors.end()) {
        fprintf(stderr, "error: %s: the model has no tensor '%s'\n", at, name.c_str());
        return false;
    }
    ggml_tensor * t = it->second;
    if (source == nullptr && !sensitivity_storage_supported(t->type)) {
        fprintf(stderr, "error: %s: tensor '%s' is stored as %s; the reference must be F32, F16 or BF16\n",
                at, name.c_str(), ggml_type_name(t->type));
        return false;
    }
    if (!sensitivity_buffer_swappable(t)) {
        fprintf(stderr, "error: %s: tensor '%s' is in a %s buffer, whose layout is not ggml's own (a repacked or split "
                "buffer type): its weights cannot be swapped in place\n", at, name.c_str(),
                t->buffer ? ggml_backend_buffer_name(t->buffer) : "missing");
        return false;
    }
    const ggml_type type = sensitivity_parse_type(type_name);
    if (type == GGML_TYPE_COUNT || !sensitivity_type_supported(type)) {
        fprintf(stderr, "error: %s: unknown or unsupported type '%s'\n", at, type_name.c_str());
        return false;
    }
    if (ggml_n_dims(t) < 2 && type != t->type) {
        fprintf(stderr, "error: %s: tensor '%s' is not a matrix; only matrices take another type\n", at, name.c_str());
        return false;
    }
    const int64_t blck_size = ggml_blck_size(type);
    if (t->ne[0] % blck_size != 0) {
        fprintf(stderr, "error: %s: type %s does not fit tensor '%s': row length %" PRId64 " is not a multiple of %" PRId64 "\n",
                at, ggml_type_name(type), name.c_str(), t->ne[0], blck_size);
        return false;
    }
    if (source != nullptr || ggml_row_size(type, t->ne[0]) <= ggml_row_size(t->type, t->ne[0])) {
        // the candidate's bytes go in the tensor's place (an F32 candidate of a 16-bit tensor is the tensor itself,
        // unless its values come from a source)
        const size_t need = sensitivity_alloc_size(t, type);
        if (need > ggml_nbytes(t)) {
            fprintf(stderr, "error: %s: type %s of tensor '%s' takes %zu bytes in a %s buffer, more than the %zu the "
                    "tensor holds as %s\n", at, ggml_type_name(type), name.c_str(), need,
                    ggml_backend_buffer_name(t->buffer), ggml_nbytes(t), ggml_type_name(t->type));
            return false;
        }
    }
    if (ggml_quantize_requires_imatrix(type) && imatrix.find(name) == imatrix.end()) {
        fprintf(stderr, "error: %s: type %s needs an importance matrix for tensor '%s' (--imatrix)\n",
                at, ggml_type_name(type), name.c_str());
        return false;
    }
    const auto im = imatrix.find(name);
    if (im != imatrix.end() && (int64_t) im->second.size() != t->ne[0]*t->ne[2]) {
        fprintf(stderr, "error: %s: the importance matrix of '%s' has %zu values, expected %" PRId64 "\n",
                at, name.c_str(), im->second.size(), t->ne[0]*t->ne[2]);
        return false;
    }
    const int64_t source_id = source != nullptr ? sensitivity_source_tensor(*source, at, name, t) : -1;
    if (source != nullptr && source_id < 0) {
        return false;
    }
    const int64_t nrows = ggml_nelements(t)/t->ne[0];
    pair = { name, t, type, ggml_row_size(type, t->ne[0])*nrows, source_id };
    return true;
}

// the next line of a pairs file that is not blank nor a comment, without its '\r'; false at the end of input
static bool sensitivity_next_line(std::istream & in, std::string & line, int & line_no) {
    while (std::getline(in, line)) {
        ++line_no;
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        if (!line.empty() && line[0] != '#') {
            return true;
        }
    }
    return false;
}

// allow_empty: a file with no pairs is no error (a run that only writes the reference)
static bool sensitivity_read_pairs(const std::string & fname, const sensitivity_tensor_map & tensors,
        const sensitivity_imatrix_map & imatrix, const sensitivity_source * source, bool allow_empty,
        std::vector<sensitivity_pair> & pairs) {
    std::ifstream in(fname);
    if (!in) {
        fprintf(stderr, "error: cannot open pairs file '%s'\n", fname.c_str());
        return false;
    }
    std::string line;
    int line_no = 0;
    while (sensitivity_next_line(in, line, line_no)) {
        sensitivity_pair pair;
        if (!sensitivity_parse_pair(line, fname + ":" + std::to_string(line_no), tensors, imatrix, source, pair)) {
            return false;
        }
        pairs.push_back(pair);
    }
    if (pairs.empty() && !allow_empty) {
        fprintf(stderr, "error: %s: no pairs to measure\n", fname.c_str());
        return false;
    }
    return true;
}

// importance per column, normalised as llama-quantize does (sums / counts)
static bool sensitivity_load_imatrix(const std::string & fname, sensitivity_imatrix_map & out) {
    common_imatrix loaded;
    if (!common_imatrix_load(fname, loaded)) {
        fprintf(stderr, "error: failed to load the importance matrix '%s'\n", fname.c_str());
        return false;
    }
    for (const auto & [name, entry] : loaded.entries) {
        auto & e = out[name];
        e.resize(entry.sums.size());
        if (!loaded.is_legacy) {
            const int64_t ncounts = entry.counts.size();
            if (ncounts == 0) {
                std::fill(e.begin(), e.end(), 1.0f);
                continue;
            }
            const int64_t ne0 = (int64_t) entry.sums.size()/ncounts;
            for (int64_t j = 0; j < ncounts; ++j) {
                const float count = (float) entry.counts[j];
                for (int64_t i = 0; i < ne0; ++i) {
                    e[j*ne0 + i] = count > 0.0f ? entry.sums[j*ne0 + i]/count : 1.0f;
                }
            }
        } else {
            // legacy format: sums hold (raw/count)*ncall
            const int64_t ncall = entry.counts.empty() ? 0 : entry.counts[0];
            for (size_t i = 0; i < entry.sums.size(); ++i) {
                e[i] = ncall > 0 ? entry.sums[i]/ncall : entry.sums[i];
            }
        }
    }
    fprintf(stderr, "%s: loaded %zu importance entries from %s\n", __func__, out.size(), fname.c_str());
    return true;
}

// the tensor's weights as float, read from its storage type
static void sensitivity_to_float(const ggml_tensor * t, const std::vector<uint8_t> & data, std::vector<float> & out) {
    const int64_t n = ggml_nelements(t);
    out.resize(n);
    sensitivity_values_to_float(t->type, data.data(), out.data(), n);
}

// src quantized to type, row by row, as llama-quantize's ggml_quantize_chunk writes it
static void sensitivity_quantize(const ggml_tensor * t, ggml_type type, const std::vector<float> & src,
        const float * imatrix, int n_threads, std::vector<uint8_t> & dst) {
    const int64_t n_per_row = t->ne[0];
    const int64_t nrows     = ggml_nelements(t)/n_per_row;
    const int64_t rows_per_slice = t->ne[1]; // rows sharing one imatrix slice (one expert)
    const size_t  row_size  = ggml_row_size(type, n_per_row);

    dst.resize(nrows*row_size);
    ggml_quantize_init(type);

    // rows are independent: quantize them in blocks of rows inside one importance slice
    // (one expert of a 3-D tensor)
    const int64_t rows_per_block   = std::min<int64_t>(rows_per_slice, 16);
    const int64_t blocks_per_slice = (rows_per_slice + rows_per_block - 1)/rows_per_block;
    const int64_t n_blocks         = (nrows/rows_per_slice)*blocks_per_slice;
    sensitivity_parallel_for(n_threads, n_threads, [&](int64_t ith) {
        for (int64_t b = ith; b < n_blocks; b += n_threads) {
            const int64_t slice = b/blocks_per_slice;
            const int64_t r0 = slice*rows_per_slice + (b % blocks_per_slice)*rows_per_block;
            const int64_t r1 = std::min(r0 + rows_per_block, (slice + 1)*rows_per_slice);
            const float * im = imatrix ? imatrix + (slice % t->ne[2])*n_per_row : nullptr;
            ggml_quantize_chunk(type, src.data() + r0*n_per_row, dst.data() + r0*row_size, 0, r1 - r0, n_per_row, im);
        }
    });
}

// a tensor that holds a candidate's quantized bytes under the candidate's type, as in a quantized file;
// the destructor puts the original type, strides and bytes back, on every path out of a measurement
struct sensitivity_swap {
    ggml_tensor *                t;
    const std::vector<uint8_t> & original;
    ggml_type                    type;
    size_t                       nb[GGML_MAX_DIMS];

    sensitivity_swap(ggml_tensor * t, const std::vector<uint8_t> & original) : t(t), original(original), type(t->type) {
        memcpy(nb, t->nb, sizeof(nb));
    }

    // the quantized bytes, with the buffer's padding zeroed, never need more room than the original bytes,
    // which the destructor writes back (checked for each pair when it is read: sensitivity_parse_pair)
    void set(ggml_type qtype, std::vector<uint8_t> & data) {
        const size_t nbytes = data.size();
        const size_t alloc  = sensitivity_alloc_size(t, qtype);
        GGML_ASSERT(nbytes <= alloc && alloc <= original.size());
        sensitivity_set_type(t, qtype);
        GGML_ASSERT(nbytes == ggml_nbytes(t));
        // the bytes as a flat I8 tensor at the same place, so that the padding past ggml_nbytes is written too
        ggml_tensor bytes = *t;
        bytes.type  = GGML_TYPE_I8;
        bytes.ne[0] = (int64_t) alloc;
        bytes.nb[0] = 1;
        for (int i = 1; i < GGML_MAX_DIMS; ++i) {
            bytes.ne[i] = 1;
            bytes.nb[i] = alloc;
        }
        data.resize(alloc, 0);
        ggml_backend_tensor_set(&bytes, data.data(), 0, alloc);
        data.resize(nbytes);
    }

    ~sensitivity_swap() {
        t->type = type;
        memcpy(t->nb, nb, sizeof(nb));
        ggml_backend_tensor_set(t, original.data(), 0, original.size());
    }
};

static int sensitivity_main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");

    sensitivity_params params;
    bool list_devices = false;

    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto next = [&]() -> const char * {
            if (i + 1 >= argc) {
                fprintf(stderr, "error: %s needs a value\n", arg.c_str());
                exit(1);
            }
            return argv[++i];
        };
        if (arg == "-h" || arg == "--help") {
            sensitivity_print_usage(argv[0]);
            return 0;
        } else if (arg == "-m" || arg == "--model") {
            params.model = next();
        } else if (arg == "-f" || arg == "--file") {
            params.text = next();
        } else if (arg == "--pairs") {
            params.pairs = next();
        } else if (arg == "--imatrix") {
            params.imatrix = next();
        } else if (arg == "--source") {
            params.source = next();
        } else if (arg == "--reference-in") {
            params.reference_in = next();
        } else if (arg == "--reference-out") {
            params.reference_out = next();
        } else if (arg == "-c" || arg == "--ctx-size") {
            params.n_ctx = std::atoi(next());
        } else if (arg == "--chunks") {
            params.n_chunks = std::atoi(next());
        } else if (arg == "--tail-samples") {
            params.n_samp = std::atoi(next());
        } else if (arg == "--top-k") {
            params.n_top = std::atoi(next());
        } else if (arg == "-t" || arg == "--threads") {
            params.n_threads = std::atoi(next());
        } else if (arg == "-ngl" || arg == "--gpu-layers" || arg == "--n-gpu-layers") {
            const std::string value = next();
            char * end = nullptr;
            const long n = std::strtol(value.c_str(), &end, 10);
            if (value == "all") {
                params.n_gpu_layers = -1;
            } else if (!value.empty() && *end == '\0' && n >= 0 && n <= INT32_MAX) {
                params.n_gpu_layers = (int32_t) n;
            } else {
                fprintf(stderr, "error: %s: expected a number of layers >= 0 or 'all', got '%s'\n", arg.c_str(), value.c_str());
                return 1;
            }
        } else if (arg == "-dev" || arg == "--device") {
            params.devices = next();
        } else if (arg == "--list-devices") {
            list_devices = true;
        } else if (arg == "--all-positions") {
            params.all_pos = true;
        } else if (arg == "--second-half") {
            params.all_pos = false; // the default, kept for older callers
        } else if (arg == "-v" || arg == "--verbose") {
            params.verbose = true;
        } else {
            fprintf(stderr, "error: unknown argument '%s' (see --help)\n", arg.c_str());
            return 1;
        }
    }
    sensitivity_verbose = params.verbose;
    if (list_devices) {
        llama_log_set(sensitivity_log_callback, nullptr);
        ggml_backend_load_all();
        sensitivity_list_devices();
        return 0;
    }
    if (params.model.empty() || params.text.empty() || params.pairs.empty()) {
        fprintf(stderr, "error: -m, -f and --pairs are required (see --help)\n");
        return 1;
    }
    if (params.n_ctx < 8 || params.n_chunks < 1 || params.n_top < 0 || params.n_samp < 0) {
        fprintf(stderr, "error: need --ctx-size >= 8, --chunks >= 1, --top-k >= 0 and --tail-samples >= 0\n");
        return 1;
    }
    if (!params.source.empty() && params.reference_in.empty()) {
        fprintf(stderr, "error: --source needs --reference-in: the reference must be the source model's (written by "
                "a run on it with --reference-out), not the loaded model's\n");
        return 1;
    }
    if (params.n_threads <= 0) {
        params.n_threads = (int32_t) std::max(1u, std::thread::hardware_concurrency());
    }
    const bool from_stdin = params.pairs == "-";

    // fail on unreadable inputs before loading anything
    for (const std::string * fname : { &params.model, &params.text, &params.pairs, &params.source, &params.reference_in }) {
        if ((fname == &params.pairs && from_stdin) || fname->empty()) {
            continue;
        }
        std::ifstream f(*fname);
        if (!f) {
            fprintf(stderr, "error: cannot open '%s'\n", fname->c_str());
            return 1;
        }
    }

    // a measurement changes a weight's type in place: every decode must build its graph anew, or a
    // reused graph would keep views of the weight made with its previous type; nor may CUDA replay a
    // captured graph, whose kernels were chosen for the previous type (two types of one block size,
    // q4_0 and iq4_nl, give the same strides, which is all CUDA compares)
#if defined(_WIN32)
    _putenv_s("LLAMA_GRAPH_REUSE_DISABLE", "1");
    _putenv_s("GGML_CUDA_DISABLE_GRAPHS", "1");
#else
    setenv("LLAMA_GRAPH_REUSE_DISABLE", "1", 1);
    setenv("GGML_CUDA_DISABLE_GRAPHS", "1", 1);
#endif

    llama_log_set(sensitivity_log_callback, nullptr);
    ggml_backend_load_all();
    llama_backend_init();

    std::vector<ggml_backend_dev_t> devices;
    if (!params.devices.empty() && !sensitivity_parse_devices(params.devices, devices)) {
        return 1;
    }
    if (params.n_gpu_layers != 0 && !llama_supports_gpu_offload()) {
        fprintf(stderr, "warning: no usable GPU found, -ngl is ignored: every weight stays on the CPU\n");
    }

    sensitivity_imatrix_map imatrix;
    if (!params.imatrix.empty() && !sensitivity_load_imatrix(params.imatrix, imatrix)) {
        return 1;
    }
    sensitivity_source source_file;
    const sensitivity_source * source = nullptr;
    if (!params.source.empty()) {
        if (!sensitivity_open_source(params.source, "--source", source_file)) {
            return 1;
        }
        source = &source_file;
    }
    sensitivity_ref_writer ref_writer;
    if (!params.reference_out.empty() && !ref_writer.open(params.reference_out)) {
        return 1;
    }

    // writable weights (no mmap) in ggml's own layout (no repacked buffers), on the CPU or, with -ngl, on the
    // offload devices in their default buffer type (layers split over several devices, not rows)
    llama_model_params mparams = llama_model_default_params();
    mparams.load_mode       = LLAMA_LOAD_MODE_NONE;
    mparams.use_extra_bufts = false;
    mparams.n_gpu_layers    = params.n_gpu_layers;
    mparams.split_mode      = LLAMA_SPLIT_MODE_LAYER;
    if (!devices.empty()) {
        mparams.devices = devices.data();
    }

    const auto t_load = std::chrono::steady_clock::now();
    llama_model_ptr model_ptr(llama_model_load_from_file(params.model.c_str(), mparams));
    llama_model * model = model_ptr.get();
    if (model == nullptr) {
        fprintf(stderr, "error: failed to load model '%s'\n", params.model.c_str());
        return 1;
    }

    sensitivity_tensor_map tensors;
    for (const auto & it : llama_internal_get_tensor_map(model)) {
        tensors[it.first] = it.second;
    }
    std::vector<sensitivity_pair> pairs;
    if (!from_stdin && !sensitivity_read_pairs(params.pairs, tensors, imatrix, source, !params.reference_out.empty(), pairs)) {
        return 1;
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = params.n_ctx;
    cparams.n_batch         = params.n_ctx;
    cparams.n_ubatch        = params.n_ctx;
    cparams.n_seq_max       = 1;
    cparams.n_threads       = params.n_threads;
    cparams.n_threads_batch = params.n_threads;

    llama_context_ptr ctx_ptr(llama_init_from_model(model, cparams));
    llama_context * ctx = ctx_ptr.get();
    if (ctx == nullptr) {
        fprintf(stderr, "error: failed to create a context of %d tokens\n", params.n_ctx);
        return 1;
    }

    std::string text;
    {
        std::ifstream f(params.text, std::ios::binary);
        std::stringstream ss;
        ss << f.rdbuf();
        text = ss.str();
    }
    const size_t n_needed = (size_t) params.n_ctx*params.n_chunks;
    size_t n_head = 0;
    const std::vector<llama_token> tokens = sensitivity_tokenize_head(ctx, text, n_needed, n_head);
    if (tokens.size() < n_needed) {
        fprintf(stderr, "error: %s has %zu tokens, need %zu (%d chunks x %d); use a longer text or fewer chunks\n",
                params.text.c_str(), tokens.size(), n_needed, params.n_chunks, params.n_ctx);
        return 1;
    }
    fprintf(stderr, "%s: tokenized the first %zu of %zu bytes of %s: %zu tokens, %zu used\n", __func__, n_head,
            text.size(), params.text.c_str(), tokens.size(), n_needed);

    const int     n_ctx   = params.n_ctx;
    const int     first   = params.all_pos ? 0 : n_ctx/2;
    const int     n_pos   = n_ctx - 1 - first;
    const int64_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const int64_t n_total = (int64_t) n_pos*params.n_chunks;
    const int     n_threads = params.n_threads;

    if (from_stdin) {
        fprintf(stderr, "%s: pairs from stdin, %d chunks x %d tokens, scoring %d positions per chunk (%" PRId64 " in all), %d threads\n",
                __func__, params.n_chunks, n_ctx, n_pos, n_total, n_threads);
    } else {
        fprintf(stderr, "%s: %zu pairs, %d chunks x %d tokens, scoring %d positions per chunk (%" PRId64 " in all), %d threads\n",
                __func__, pairs.size(), params.n_chunks, n_ctx, n_pos, n_total, n_threads);
    }
    // reference pass
    sensitivity_reference ref;
    ref.n_vocab = n_vocab;
    ref.n_top   = params.n_top == 0 ? n_vocab : std::min<int64_t>(params.n_top, n_vocab);
    ref.n_samp  = ref.n_top < n_vocab ? params.n_samp : 0;
    fprintf(stderr, "%s: reference distributions: the top %" PRId64 " of %" PRId64 " tokens per position and %" PRId64
            " tail samples, %.1f MiB\n", __func__, ref.n_top, n_vocab, ref.n_samp,
            (double) n_total*((ref.n_top + ref.n_samp)*(sizeof(int32_t) + sizeof(double)) + sizeof(double) + sizeof(int32_t))/(1024.0*1024.0));
    try {
        ref.idx.resize((size_t) n_total*ref.n_top);
        ref.logp.resize((size_t) n_total*ref.n_top);
        ref.tail.resize(n_total);
        ref.top.resize(n_total);
        ref.samp.resize((size_t) n_total*ref.n_samp);
        ref.samp_logp.resize((size_t) n_total*ref.n_samp);
    } catch (const std::bad_alloc &) {
        fprintf(stderr, "error: out of memory for the reference distributions (%" PRId64 " positions x %" PRId64
                " tokens); lower --top-k, --chunks or -c\n", n_total, ref.n_top);
        return 1;
    }

    // what a reference file of this run holds: the fields a file read with --reference-in must match
    sensitivity_ref_header ref_header;
    memset(&ref_header, 0, sizeof(ref_header));
    memcpy(ref_header.magic, sensitivity_ref_magic, sizeof(ref_header.magic));
    ref_header.version     = sensitivity_ref_version;
    ref_header.all_pos     = params.all_pos ? 1 : 0;
    ref_header.n_vocab     = n_vocab;
    ref_header.n_ctx       = n_ctx;
    ref_header.n_chunks    = params.n_chunks;
    ref_header.n_top       = ref.n_top;
    ref_header.n_samp      = ref.n_samp;
    ref_header.n_total     = n_total;
    ref_header.tokens_hash = sensitivity_fnv1a(tokens.data(), n_needed*sizeof(llama_token));
    // the model the reference distributions are of: the source of the values (open already), else the loaded model
    const std::string & ref_model = params.source.empty() ? params.model : params.source;
    if (!params.reference_in.empty() || !params.reference_out.empty()) {
        sensitivity_source loaded_file;
        if (source == nullptr && !sensitivity_open_source(params.model, "-m", loaded_file)) {
            return 1;
        }
        if (!sensitivity_model_fingerprint(source != nullptr ? source_file : loaded_file, ref_header.model_hash)) {
            return 1;
        }
    }

    const auto t_ref = std::chrono::steady_clock::now();
    const bool ok = !params.reference_in.empty() ? sensitivity_read_reference(params.reference_in, ref_header, ref_model, ref) :
        sensitivity_eval(ctx, tokens, n_ctx, params.n_chunks, first,
        [&](int c, const float * logits, int n) {
            sensitivity_parallel_for(n, n_threads, [&](int64_t j) {
                thread_local std::vector<int32_t> scratch;
                const int64_t k = (int64_t) c*n_pos + j;
                const float * l = logits + j*n_vocab;
                int32_t * idx = ref.idx.data() + k*ref.n_top;
                sensitivity_top_tokens(l, n_vocab, ref.n_top, scratch, idx);
                const double lse = sensitivity_log_sum_exp(l, n_vocab, idx, ref.n_top, ref.top[k], ref.tail[k]);
                for (int64_t i = 0; i < ref.n_top; ++i) {
                    ref.logp[k*ref.n_top + i] = l[idx[i]] - lse;
                }
                if (ref.n_samp > 0) {
                    thread_local std::vector<double> draws;
                    sensitivity_sample_tail(l, n_vocab, lse, idx, ref.n_top, ref.n_samp, 0x5eed0000u + (uint64_t) k, draws,
                            ref.samp.data() + k*ref.n_samp, ref.samp_logp.data() + k*ref.n_samp);
                }
            });
        });
    if (!ok) {
        return 1;
    }
    if (!params.reference_out.empty() && !ref_writer.commit(ref_header, ref)) {
        return 1;
    }
    const double t_ref_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_ref).count();
    if (!params.reference_in.empty()) {
        fprintf(stderr, "%s: reference distributions read from %s\n", __func__, params.reference_in.c_str());
    }
    if (!params.reference_out.empty()) {
        fprintf(stderr, "%s: reference distributions written to %s\n", __func__, params.reference_out.c_str());
    }
    {
        double sum_tail = 0.0;
        double max_tail = 0.0;
        for (const double p_tail : ref.tail) {
            sum_tail += p_tail;
            max_tail  = std::max(max_tail, p_tail);
        }
        fprintf(stderr, "%s: reference tail mass P(R) beyond the top %" PRId64 ": mean %.3g, max %.3g\n", __func__,
                ref.n_top, sum_tail/n_total, max_tail);
    }
    fprintf(stderr, "%s: model loaded and reference %s in %.2f s (reference %s %.2f s)\n", __func__,
            params.reference_in.empty() ? "computed" : "read",
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count(),
            params.reference_in.empty() ? "pass" : "file", t_ref_s);

    // the pairs
    const ggml_tensor *  cur_tensor = nullptr;
    std::vector<uint8_t> original;  // the current tensor's bytes, for an exact restore
    std::vector<float>   weights;   // the same as float, the quantizer's input
    std::vector<uint8_t> quantized;
    std::vector<double>  kld(n_pos);
    std::vector<uint8_t> same_top(n_pos);

    // measure one pair, print its JSON line; false (after one error line) on a failure
    auto measure = [&](const sensitivity_pair & pair, const std::string & label) -> bool {
        ggml_tensor * t = pair.tensor;
        const auto t_start = std::chrono::steady_clock::now();

        if (t != cur_tensor) {
            try {
                original.resize(ggml_nbytes(t));
                ggml_backend_tensor_get(t, original.data(), 0, original.size());
                if (source != nullptr) {
                    if (!sensitivity_source_read(source_file, pair.source_id, pair.name, ggml_nelements(t), weights)) {
                        return false;
                    }
                } else {
                    sensitivity_to_float(t, original, weights);
                }
            } catch (const std::bad_alloc &) {
                fprintf(stderr, "error: out of memory for a copy of tensor '%s' (%zu bytes and %" PRId64 " floats)\n",
                        pair.name.c_str(), ggml_nbytes(t), ggml_nelements(t));
                return false;
            }
            cur_tensor = t;
        }

        sensitivity_stats stats;
        bool ok_pair = true;
        {
            // an F32 candidate of an F16/BF16 tensor has the tensor's own values: the tensor is left as it is
            sensitivity_swap swap(t, original);
            if (source != nullptr || ggml_row_size(pair.type, t->ne[0]) <= ggml_row_size(t->type, t->ne[0])) {
                const auto im = imatrix.find(pair.name);
                sensitivity_quantize(t, pair.type, weights, im != imatrix.end() ? im->second.data() : nullptr,
                        n_threads, quantized);
                swap.set(pair.type, quantized);
            }

            ok_pair = sensitivity_eval(ctx, tokens, n_ctx, params.n_chunks, first,
                [&](int c, const float * logits, int n) {
                    sensitivity_parallel_for(n, n_threads, [&](int64_t j) {
                        const int64_t k = (int64_t) c*n_pos + j;
                        const float * m = logits + j*n_vocab;
                        int32_t top  = 0;
                        double  tail = 0.0;
                        const double lse = sensitivity_log_sum_exp(m, n_vocab, ref.idx.data() + k*ref.n_top, ref.n_top, top, tail);
                        kld[j]      = sensitivity_kld(ref, k, m, lse, tail);
                        same_top[j] = top == ref.top[k];
                    });
                    // summed in order: the result does not depend on the thread count
                    for (int j = 0; j < n; ++j) {
                        stats.sum_kld    += kld[j];
                        stats.sum_kld2   += kld[j]*kld[j];
                        stats.n_same_top += same_top[j];
                        stats.count      += 1;
                    }
                });
            // the swap's destructor restores the exact original type, strides and bytes here
        }
        if (!ok_pair) {
            return false;
        }

        const double mean = stats.sum_kld/stats.count;
        const double var  = stats.sum_kld2/stats.count - mean*mean;
        const double pm   = stats.count > 1 && var > 0 ? sqrt(var/(stats.count - 1)) : 0.0;
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

        printf("{\"tensor\": %s, \"type\": %s, \"nbytes\": %zu, \"kld\": %.9g, \"kld_pm\": %.9g, \"same_top\": %.6f, \"seconds\": %.3f}\n",
                sensitivity_json_string(pair.name).c_str(), sensitivity_json_string(ggml_type_name(pair.type)).c_str(),
                pair.nbytes, mean, pm, (double) stats.n_same_top/stats.count, secs);
        fflush(stdout);
        fprintf(stderr, "[%s] %-32s %-10s KLD %.6f +/- %.6f  %.2f s\n", label.c_str(),
                pair.name.c_str(), ggml_type_name(pair.type), mean, pm, secs);
        fflush(stderr);
        return true;
    };

    if (from_stdin) {
        // one pair per line as it comes, each checked and measured before the next line is read
        std::string line;
        int line_no = 0;
        size_t n_done = 0;
        while (sensitivity_next_line(std::cin, line, line_no)) {
            sensitivity_pair pair;
            if (!sensitivity_parse_pair(line, "stdin:" + std::to_string(line_no), tensors, imatrix, source, pair)) {
                return 1;
            }
            char label[32];
            snprintf(label, sizeof(label), "%4zu", ++n_done);
            if (!measure(pair, label)) {
                return 1;
            }
        }
        fprintf(stderr, "%s: end of input after %zu pairs\n", __func__, n_done);
    } else {
        for (size_t ip = 0; ip < pairs.size(); ++ip) {
            char label[64];
            snprintf(label, sizeof(label), "%4zu/%4zu", ip + 1, pairs.size());
            if (!measure(pairs[ip], label)) {
                return 1;
            }
        }
    }

    ctx_ptr.reset();
    model_ptr.reset();
    llama_backend_free();

    return 0;
}

int main(int argc, char ** argv) {
    // every failure is one line 'error: ...' and a non-zero exit; an exception unwinds through the
    // tensor swap, which restores the original weights on the way out
    try {
        return sensitivity_main(argc, argv);
    } catch (const std::bad_alloc &) {
        fprintf(stderr, "error: out of memory\n");
    } catch (const std::exception & e) {
        fprintf(stderr, "error: %s\n", e.what());
    }
    return 1;
}
