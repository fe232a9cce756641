// llama-costs: the time of one weight op as llama.cpp runs it during inference
//
// A case is (op, weight type, ne0, ne1, n): MUL_MAT of an [ne0, ne1] weight with n F32
// activation columns, or GET_ROWS of n rows of it. For each case the weight is placed in
// the buffer type llama.cpp's model loader would choose for that op (the first buffer type
// of the device's list whose device supports the op, as select_weight_buft in
// src/llama-model-loader.cpp; on the CPU: the extra buffer types, e.g. CPU_REPACK or AMX,
// before the plain CPU buffer), the op is computed by the backend itself (repacked GEMM/GEMV,
// llamafile sgemm, the activations quantized to the vec_dot type inside the op) with a
// threadpool set up as llama-bench sets it up, and the median over the repetitions is kept.
//
// Every repetition computes the op on enough copies of the weight to stream through
// --working-set bytes, so the weight comes from memory as it does when a whole model runs,
// not from the cache a single repeated op would keep it in.
//
// One JSON line describing the device, then one JSON line per case, go to stdout; errors go
// to stderr as one line, with a non-zero exit status. Every case is checked before any is run.

#include "common.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(_MSC_VER)
#pragma warning(disable: 4244 4267) // possible loss of data
#endif

struct costs_params {
    std::vector<std::string> cases;        // OP:TYPE:NE0:NE1:N from the command line
    std::string              cases_file;   // one case per line, "-" = stdin
    std::string              device = "CPU";
    int32_t                  n_threads       = 0;   // 0 = llama-bench's default
    int32_t                  n_reps          = 5;
    int32_t                  working_set_mib = 512;
    bool                     repack          = true;   // the CPU's extra buffer types, as llama-bench --repack
    bool                     verbose         = false;
    bool                     list_devices    = false;
    bool                     device_info     = false;
};

struct costs_case {
    ggml_op   op;
    ggml_type type;
    int64_t   ne0;
    int64_t   ne1;
    int64_t   n;      // MUL_MAT: activation columns (tokens); GET_ROWS: rows fetched
    int       line;   // where it was given, for error messages
};

typedef std::pair<ggml_backend_dev_t, ggml_backend_buffer_type_t> costs_buft;

// each repetition does at least this much arithmetic (the copies beyond what the working set needs
// keep short ops measurable; the cap keeps long ones short)
static const double  COSTS_TARGET_FLOPS_CPU = 2e9;
static const double  COSTS_TARGET_FLOPS_GPU = 5e10;
static const int64_t COSTS_MAX_COPIES       = 4096;
// rows quantized once and tiled over the weight: quantizing a 262144-row embedding per case is slow
static const int64_t COSTS_QUANTIZE_ROWS    = 256;

static void costs_print_usage(const char * argv0) {
    costs_params params;
    fprintf(stderr, "usage: %s [options] [OP:TYPE:NE0:NE1:N ...]\n", argv0);
    fprintf(stderr, "\n");
    fprintf(stderr, "Time the weight op of each case as llama.cpp runs it in inference and print one JSON line per case.\n");
    fprintf(stderr, "A case is OP (mul_mat or get_rows), a ggml weight type, the weight's row length NE0 and row count NE1,\n");
    fprintf(stderr, "and N: the activation columns (tokens) of MUL_MAT, or the rows GET_ROWS fetches.\n");
    fprintf(stderr, "e.g. mul_mat:q4_K:640:1024:512 get_rows:q8_0:640:262144:1\n");
    fprintf(stderr, "\n");
    fprintf(stderr, "options:\n");
    fprintf(stderr, "  -h, --help              show this help message and exit\n");
    fprintf(stderr, "  -f, --cases FNAME       read cases from FNAME ('-': stdin), one per line, 'OP TYPE NE0 NE1 N';\n");
    fprintf(stderr, "                          '#' starts a comment\n");
    fprintf(stderr, "  -d, --device NAME       device to run on (default: %s; e.g. CUDA0). GET_ROWS of the token\n", params.device.c_str());
    fprintf(stderr, "                          embedding runs on the CPU in llama.cpp, so GET_ROWS cases always do\n");
    fprintf(stderr, "  -t, --threads N         CPU threads (default: llama-bench's, %d here)\n", common_cpu_get_num_math());
    fprintf(stderr, "  -r, --repetitions N     timed repetitions per case, the median is kept (default: %d)\n", params.n_reps);
    fprintf(stderr, "  --working-set MIB       bytes of weight copies each repetition streams through (default: %d)\n", params.working_set_mib);
    fprintf(stderr, "  --repack <0|1>          use the CPU's extra buffer types (repacked layouts, AMX), as\n");
    fprintf(stderr, "                          llama-bench --repack (default: %d)\n", params.repack ? 1 : 0);
    fprintf(stderr, "  --device-info           print the device line (the first line of a run) and exit\n");
    fprintf(stderr, "  --list-devices          print the devices as JSON lines and exit\n");
    fprintf(stderr, "  -v, --verbose           show the ggml log\n");
}

static bool costs_verbose = false;

static void costs_log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (costs_verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
        fflush(stderr);
    }
}

[[noreturn]] static void costs_die(const std::string & msg) {
    fprintf(stderr, "llama-costs: error: %s\n", msg.c_str());
    fflush(stdout);
    exit(1);
}

static bool costs_iequals(const std::string & a, const char * b) {
    const size_t n = strlen(b);
    if (a.size() != n) {
        return false;
    }
    for (size_t i = 0; i < n; ++i) {
        if (tolower((unsigned char) a[i]) != tolower((unsigned char) b[i])) {
            return false;
        }
    }
    return true;
}

// a JSON string literal; names read from user files may be invalid UTF-8, which is replaced, not thrown
static std::string costs_json_string(const std::string & s) {
    return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

static ggml_type costs_parse_type(const std::string & name) {
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        const char * type_name = ggml_type_name((ggml_type) i);
        if (type_name && costs_iequals(name, type_name)) {
            return (ggml_type) i;
        }
    }
    return GGML_TYPE_COUNT;
}

// a weight type ggml_quantize_chunk can write (Q8_1 and Q8_K are activation types of vec_dot only)
static bool costs_type_supported(ggml_type type) {
    if (type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16) {
        return true;
    }
    const ggml_type_traits * traits = ggml_get_type_traits(type);
    return traits->is_quantized && traits->blck_size > 0 && traits->type_size > 0 && traits->to_float != nullptr &&
           type != GGML_TYPE_Q8_1 && type != GGML_TYPE_Q8_K;
}

static int64_t costs_parse_int(const std::string & s, const char * what, const std::string & where) {
    size_t pos = 0;
    long long v = 0;
    try {
        v = std::stoll(s, &pos);
    } catch (const std::exception &) {
        pos = 0;
    }
    if (pos != s.size() || s.empty()) {
        costs_die(where + ": " + what + " '" + s + "' is not an integer");
    }
    if (v <= 0) {
        costs_die(where + ": " + what + " must be positive, got " + s);
    }
    return v;
}

// "OP TYPE NE0 NE1 N", fields separated by ':', ',' or blanks
static costs_case costs_parse_case(const std::string & text, const std::string & where, int line) {
    std::vector<std::string> fields;
    std::string cur;
    for (const char c : text) {
        if (c == ':' || c == ',' || c == ' ' || c == '\t' || c == '\r') {
            if (!cur.empty()) {
                fields.push_back(cur);
                cur.clear();
            }
        } else {
            cur += c;
        }
    }
    if (!cur.empty()) {
        fields.push_back(cur);
    }
    if (fields.size() != 5) {
        costs_die(where + ": '" + text + "' is not a case OP:TYPE:NE0:NE1:N (" + std::to_string(fields.size()) + " fields)");
    }

    costs_case c;
    c.line = line;
    if (costs_iequals(fields[0], "mul_mat")) {
        c.op = GGML_OP_MUL_MAT;
    } else if (costs_iequals(fields[0], "get_rows")) {
        c.op = GGML_OP_GET_ROWS;
    } else {
        costs_die(where + ": unknown op '" + fields[0] + "' (known: mul_mat, get_rows)");
    }
    c.type = costs_parse_type(fields[1]);
    if (c.type == GGML_TYPE_COUNT) {
        costs_die(where + ": unknown type '" + fields[1] + "'");
    }
    if (!costs_type_supported(c.type)) {
        costs_die(where + ": type " + ggml_type_name(c.type) + " is not a weight type");
    }
    c.ne0 = costs_parse_int(fields[2], "NE0", where);
    c.ne1 = costs_parse_int(fields[3], "NE1", where);
    c.n   = costs_parse_int(fields[4], "N", where);
    const int64_t blck = ggml_blck_size(c.type);
    if (c.ne0 % blck != 0) {
        costs_die(where + ": " + ggml_type_name(c.type) + " needs rows of a multiple of " + std::to_string(blck) +
                  " weights, NE0 is " + std::to_string(c.ne0));
    }
    return c;
}

static void costs_parse_args(int argc, char ** argv, costs_params & params) {
    auto need = [&](int & i) -> std::string {
        if (i + 1 >= argc) {
            costs_die(std::string("option ") + argv[i] + " needs a value");
        }
        return argv[++i];
    };
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            costs_print_usage(argv[0]);
            exit(0);
        } else if (arg == "-f" || arg == "--cases") {
            params.cases_file = need(i);
        } else if (arg == "-d" || arg == "--device") {
            params.device = need(i);
        } else if (arg == "-t" || arg == "--threads") {
            params.n_threads = (int32_t) costs_parse_int(need(i), "--threads", "command line");
        } else if (arg == "-r" || arg == "--repetitions") {
            params.n_reps = (int32_t) costs_parse_int(need(i), "--repetitions", "command line");
        } else if (arg == "--working-set") {
            params.working_set_mib = (int32_t) costs_parse_int(need(i), "--working-set", "command line");
        } else if (arg == "--repack") {
            const std::string v = need(i);
            if (v != "0" && v != "1") {
                costs_die("--repack takes 0 or 1, got '" + v + "'");
            }
            params.repack = v == "1";
        } else if (arg == "--list-devices") {
            params.list_devices = true;
        } else if (arg == "--device-info") {
            params.device_info = true;
        } else if (arg == "-v" || arg == "--verbose") {
            params.verbose = true;
        } else if (!arg.empty() && arg[0] == '-' && arg != "-") {
            costs_die("unknown option '" + arg + "' (see --help)");
        } else {
            params.cases.push_back(arg);
        }
    }
}

static std::vector<costs_case> costs_read_cases(const costs_params & params) {
    std::vector<costs_case> cases;
    for (size_t i = 0; i < params.cases.size(); ++i) {
        cases.push_back(costs_parse_case(params.cases[i], "argument '" + params.cases[i] + "'", 0));
    }
    if (!params.cases_file.empty()) {
        std::ifstream file;
        std::istream * in = &std::cin;
        if (params.cases_file != "-") {
            file.open(params.cases_file);
            if (!file) {
                costs_die("cannot open the cases file '" + params.cases_file + "'");
            }
            in = &file;
        }
        std::string line;
        int n_line = 0;
        while (std::getline(*in, line)) {
            ++n_line;
            const size_t hash = line.find('#');
            if (hash != std::string::npos) {
                line = line.substr(0, hash);
            }
            if (line.find_first_not_of(" \t\r") == std::string::npos) {
                continue;
            }
            cases.push_back(costs_parse_case(line, params.cases_file + ":" + std::to_string(n_line), n_line));
        }
    }
    if (cases.empty()) {
        costs_die("no cases given (OP:TYPE:NE0:NE1:N arguments or --cases FILE; see --help)");
    }
    return cases;
}

// the weight tensor of a case, in ctx (no data)
static ggml_tensor * costs_new_weight(ggml_context * ctx, const costs_case & c) {
    return ggml_new_tensor_2d(ctx, c.type, c.ne0, c.ne1);
}

// the op of a case on weight w, with its inputs created in ctx
static ggml_tensor * costs_new_op(ggml_context * ctx, const costs_case & c, ggml_tensor * w, ggml_tensor * input) {
    if (c.op == GGML_OP_MUL_MAT) {
        return ggml_mul_mat(ctx, w, input);
    }
    return ggml_get_rows(ctx, w, input);
}

static ggml_tensor * costs_new_input(ggml_context * ctx, const costs_case & c) {
    if (c.op == GGML_OP_MUL_MAT) {
        return ggml_new_tensor_2d(ctx, GGML_TYPE_F32, c.ne0, c.n); // activations, F32 as the model produces them
    }
    return ggml_new_tensor_1d(ctx, GGML_TYPE_I32, c.n);
}

// whether the device runs the op with the weight in buft (weight_buft_supported in llama-model-loader.cpp)
static bool costs_buft_supported(const costs_case & c, ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft) {
    ggml_init_params params = {
        /*.mem_size   =*/ ggml_tensor_overhead()*8,
        /*.mem_buffer =*/ NULL,
        /*.no_alloc   =*/ true,
    };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * w = costs_new_weight(ctx, c);
    // llama.cpp checks with a batch of 512 whatever the batch will be
    costs_case probe = c;
    probe.n = 512;
    ggml_tensor * op = costs_new_op(ctx, probe, w, costs_new_input(ctx, probe));

    // a dummy buffer, so that supports_op sees the buffer type
    w->buffer = ggml_backend_buft_alloc_buffer(buft, 0);
    const bool ok = ggml_backend_dev_supports_op(dev, op);
    ggml_backend_buffer_free(w->buffer);
    w->buffer = nullptr;
    ggml_free(ctx);
    return ok;
}

static ggml_backend_dev_t costs_cpu_dev() {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev) {
        costs_die("no CPU backend in this build");
    }
    return dev;
}

// llama.cpp's CPU buffer types without a GPU: ACCEL devices, the CPU's extra buffer types, the CPU
// (make_cpu_buft_list in src/llama-model.cpp; a GPU's host buffer type only comes first when GPU
// devices are used, which a CPU-only run does not)
static std::vector<costs_buft> costs_cpu_bufts(bool use_extra_bufts) {
    std::vector<costs_buft> list;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_ACCEL) {
            ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(dev);
            if (buft != ggml_backend_cpu_buffer_type()) {
                list.emplace_back(dev, buft);
            }
        }
    }
    ggml_backend_dev_t cpu_dev = costs_cpu_dev();
    ggml_backend_reg_t cpu_reg = ggml_backend_dev_backend_reg(cpu_dev);
    auto get_extra_bufts = (ggml_backend_dev_get_extra_bufts_t)
        ggml_backend_reg_get_proc_address(cpu_reg, "ggml_backend_dev_get_extra_bufts");
    if (use_extra_bufts && get_extra_bufts) {
        for (ggml_backend_buffer_type_t * extra = get_extra_bufts(cpu_dev); extra && *extra; ++extra) {
            list.emplace_back(cpu_dev, *extra);
        }
    }
    list.emplace_back(cpu_dev, ggml_backend_dev_buffer_type(cpu_dev));
    return list;
}

// a GPU's buffer types: its own, then its extra ones (make_gpu_buft_list, no row split)
static std::vector<costs_buft> costs_gpu_bufts(ggml_backend_dev_t dev) {
    std::vector<costs_buft> list;
    list.emplace_back(dev, ggml_backend_dev_buffer_type(dev));
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    if (reg) {
        auto get_extra_bufts = (ggml_backend_dev_get_extra_bufts_t)
            ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
        if (get_extra_bufts) {
            for (ggml_backend_buffer_type_t * extra = get_extra_bufts(dev); extra && *extra; ++extra) {
                list.emplace_back(dev, *extra);
            }
        }
    }
    return list;
}

struct costs_backend {
    ggml_backend_dev_t      dev     = nullptr;
    ggml_backend_t          backend = nullptr;
    std::vector<costs_buft> bufts;
    ggml_threadpool_t       threadpool = nullptr;
    bool                    is_cpu  = true;
};

// a CPU backend with a threadpool made as llama-bench makes it (default params: poll 50, normal priority)
static void costs_init_cpu(costs_backend & be, int n_threads, bool use_extra_bufts) {
    be.dev     = costs_cpu_dev();
    be.backend = ggml_backend_dev_init(be.dev, nullptr);
    if (!be.backend) {
        costs_die("cannot initialize the CPU backend");
    }
    be.bufts  = costs_cpu_bufts(use_extra_bufts);
    be.is_cpu = true;

    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(be.dev);
    auto threadpool_new  = (decltype(ggml_threadpool_new) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
    auto set_threadpool  = (decltype(ggml_backend_cpu_set_threadpool) *) ggml_backend_reg_get_proc_address(reg, "ggml_backend_cpu_set_threadpool");
    auto set_n_threads   = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (set_n_threads) {
        set_n_threads(be.backend, n_threads);
    }
    if (threadpool_new && set_threadpool) {
        ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
        be.threadpool = threadpool_new(&tpp);
        if (!be.threadpool) {
            costs_die("cannot create a threadpool of " + std::to_string(n_threads) + " threads");
        }
        set_threadpool(be.backend, be.threadpool);
    }
}

static void costs_free_backend(costs_backend & be) {
    if (be.backend) {
        ggml_backend_free(be.backend);
    }
    if (be.threadpool) {
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(costs_cpu_dev());
        auto threadpool_free = (decltype(ggml_threadpool_free) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free");
        if (threadpool_free) {
            threadpool_free(be.threadpool);
        }
    }
}

static const costs_buft * costs_select_buft(const costs_case & c, const costs_backend & be) {
    for (const auto & b : be.bufts) {
        if (costs_buft_supported(c, b.first, b.second)) {
            return &b;
        }
    }
    return nullptr;
}

static double costs_op_flops(const costs_case & c) {
    if (c.op == GGML_OP_MUL_MAT) {
        return 2.0 * (double) c.ne0 * (double) c.ne1 * (double) c.n;
    }
    return (double) c.ne0 * (double) c.n; // GET_ROWS: one conversion per fetched weight
}

struct costs_result {
    std::string buft;
    std::string device;
    int64_t     copies = 0;
    double      us_median = 0.0;
    double      us_min    = 0.0;
    double      us_max    = 0.0;
};

static costs_result costs_run_case(const costs_case & c, const costs_backend & be, const costs_buft & buft,
                                   const costs_params & params, std::mt19937 & rng) {
    costs_result res;
    res.buft   = ggml_backend_buft_name(buft.second);
    res.device = ggml_backend_dev_name(ggml_backend_get_device(be.backend));

    const size_t  row_size = ggml_row_size(c.type, c.ne0);
    const size_t  w_bytes  = row_size * (size_t) c.ne1;
    const double  ws_bytes = (double) params.working_set_mib * 1024.0 * 1024.0;
    const double  target   = be.is_cpu ? COSTS_TARGET_FLOPS_CPU : COSTS_TARGET_FLOPS_GPU;
    int64_t copies = std::min((int64_t) std::ceil(ws_bytes / (double) w_bytes),
                              (int64_t) std::ceil(target / costs_op_flops(c)));
    copies = std::max<int64_t>(1, std::min(copies, COSTS_MAX_COPIES));
    res.copies = copies;

    // the weights, in the selected buffer type
    ggml_init_params wparams = {
        /*.mem_size   =*/ ggml_tensor_overhead()*(size_t)(copies + 1),
        /*.mem_buffer =*/ NULL,
        /*.no_alloc   =*/ true,
    };
    ggml_context * ctx_w = ggml_init(wparams);
    std::vector<ggml_tensor *> weights;
    for (int64_t i = 0; i < copies; ++i) {
        weights.push_back(costs_new_weight(ctx_w, c));
    }
    ggml_backend_buffer_t buf_w = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft.second);
    if (!buf_w) {
        costs_die("cannot allocate " + std::to_string(copies) + " copies of a " + ggml_type_name(c.type) + " [" +
                  std::to_string(c.ne0) + ", " + std::to_string(c.ne1) + "] weight in " + res.buft);
    }
    ggml_backend_buffer_set_usage(buf_w, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    // quantize a few rows of random values once and tile them over the weight
    {
        const int64_t n_q = std::min<int64_t>(c.ne1, COSTS_QUANTIZE_ROWS);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> src((size_t) (n_q * c.ne0));
        for (auto & v : src) {
            v = normal(rng);
        }
        std::vector<float> imatrix;
        if (ggml_quantize_requires_imatrix(c.type)) {
            imatrix.assign((size_t) c.ne0, 1.0f);
        }
        std::vector<uint8_t> q((size_t) n_q * row_size);
        ggml_quantize_chunk(c.type, src.data(), q.data(), 0, n_q, c.ne0, imatrix.empty() ? nullptr : imatrix.data());
        std::vector<uint8_t> data(w_bytes);
        for (int64_t r = 0; r < c.ne1; r += n_q) {
            const int64_t k = std::min(n_q, c.ne1 - r);
            memcpy(data.data() + (size_t) r * row_size, q.data(), (size_t) k * row_size);
        }
        for (ggml_tensor * w : weights) {
            ggml_backend_tensor_set(w, data.data(), 0, w_bytes); // a repack buffer repacks here
        }
    }

    // the input, the ops and one output shared by every copy's op (nothing reads it back)
    ggml_init_params oparams = {
        /*.mem_size   =*/ ggml_tensor_overhead()*(size_t)(copies + 2) + ggml_graph_overhead_custom((size_t) copies + 1, false),
        /*.mem_buffer =*/ NULL,
        /*.no_alloc   =*/ true,
    };
    ggml_context * ctx = ggml_init(oparams);
    ggml_tensor * input = costs_new_input(ctx, c);
    std::vector<ggml_tensor *> ops;
    for (ggml_tensor * w : weights) {
        ops.push_back(costs_new_op(ctx, c, w, input));
    }
    ggml_backend_buffer_type_t act_buft = ggml_backend_get_default_buffer_type(be.backend);
    const size_t align = ggml_backend_buft_get_alignment(act_buft);
    const size_t in_bytes  = GGML_PAD(ggml_nbytes(input), align);
    const size_t out_bytes = GGML_PAD(ggml_nbytes(ops[0]), align);
    ggml_backend_buffer_t buf_act = ggml_backend_buft_alloc_buffer(act_buft, in_bytes + out_bytes);
    if (!buf_act) {
        costs_die("cannot allocate the activations of a case");
    }
    char * base = (char *) ggml_backend_buffer_get_base(buf_act);
    if (ggml_backend_tensor_alloc(buf_act, input, base) != GGML_STATUS_SUCCESS) {
        costs_die("cannot place the input tensor");
    }
    for (ggml_tensor * op : ops) {
        if (ggml_backend_tensor_alloc(buf_act, op, base + in_bytes) != GGML_STATUS_SUCCESS) {
            costs_die("cannot place an output tensor");
        }
    }
    if (c.op == GGML_OP_MUL_MAT) {
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> x((size_t) (c.ne0 * c.n));
        for (auto & v : x) {
            v = normal(rng);
        }
        ggml_backend_tensor_set(input, x.data(), 0, ggml_nbytes(input));
    } else {
        std::uniform_int_distribution<int32_t> pick(0, (int32_t) (c.ne1 - 1));
        std::vector<int32_t> ids((size_t) c.n);
        for (auto & v : ids) {
            v = pick(rng);
        }
        ggml_backend_tensor_set(input, ids.data(), 0, ggml_nbytes(input));
    }

    ggml_cgraph * gf = ggml_new_graph_custom(ctx, (size_t) copies + 1, false);
    for (ggml_tensor * op : ops) {
        ggml_build_forward_expand(gf, op);
    }

    auto compute = [&]() {
        const ggml_status status = ggml_backend_graph_compute(be.backend, gf);
        if (status != GGML_STATUS_SUCCESS) {
            costs_die(std::string("graph compute failed: ") + ggml_status_to_string(status));
        }
        ggml_backend_synchronize(be.backend);
    };

    compute(); // warmup: first touch of the work buffer and of the output
    std::vector<double> times;
    for (int i = 0; i < params.n_reps; ++i) {
        const int64_t t0 = ggml_time_us();
        compute();
        times.push_back((double) (ggml_time_us() - t0) / (double) copies);
    }
    std::sort(times.begin(), times.end());
    const size_t m = times.size();
    res.us_median = m % 2 ? times[m / 2] : 0.5 * (times[m / 2 - 1] + times[m / 2]);
    res.us_min    = times.front();
    res.us_max    = times.back();

    ggml_backend_buffer_free(buf_act);
    ggml_free(ctx);
    ggml_backend_buffer_free(buf_w);
    ggml_free(ctx_w);
    return res;
}

static void costs_print_devices() {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const char * kind = "other";
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU:   kind = "cpu";   break;
            case GGML_BACKEND_DEVICE_TYPE_GPU:   kind = "gpu";   break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU:  kind = "igpu";  break;
            case GGML_BACKEND_DEVICE_TYPE_ACCEL: kind = "accel"; break;
            default: break;
        }
        printf("{\"device\": %s, \"description\": %s, \"kind\": \"%s\"}\n",
               costs_json_string(ggml_backend_dev_name(dev)).c_str(),
               costs_json_string(ggml_backend_dev_description(dev)).c_str(), kind);
    }
}

// the first line: what the costs were measured on, for the driver's machine fingerprint
static void costs_print_device_line(const costs_backend & be, const costs_params & params, int n_threads) {
    std::ostringstream os;
    os << "{\"device\": " << costs_json_string(ggml_backend_dev_name(be.dev))
       << ", \"description\": " << costs_json_string(ggml_backend_dev_description(be.dev))
       << ", \"cpu\": " << costs_json_string(ggml_backend_dev_description(costs_cpu_dev()))
       << ", \"threads\": " << n_threads
       << ", \"repetitions\": " << params.n_reps
       << ", \"working_set_mib\": " << params.working_set_mib
       << ", \"repack\": " << (params.repack ? "true" : "false");
    os << ", \"cpu_features\": {";
    ggml_backend_reg_t cpu_reg = ggml_backend_dev_backend_reg(costs_cpu_dev());
    auto get_features = (ggml_backend_get_features_t) ggml_backend_reg_get_proc_address(cpu_reg, "ggml_backend_get_features");
    if (get_features) {
        bool first = true;
        for (ggml_backend_feature * f = get_features(cpu_reg); f && f->name; ++f) {
            os << (first ? "" : ", ") << costs_json_string(f->name) << ": " << costs_json_string(f->value);
            first = false;
        }
    }
    os << "}, \"buffer_types\": [";
    for (size_t i = 0; i < be.bufts.size(); ++i) {
        os << (i ? ", " : "") << costs_json_string(ggml_backend_buft_name(be.bufts[i].second));
    }
    os << "]}";
    printf("%s\n", os.str().c_str());
    fflush(stdout);
}

int main(int argc, char ** argv) {
    costs_params params;
    ggml_backend_load_all();
    costs_parse_args(argc, argv, params);
    costs_verbose = params.verbose;
    ggml_log_set(costs_log_callback, nullptr);
    if (params.list_devices) {
        costs_print_devices();
        return 0;
    }
    const int n_threads = params.n_threads > 0 ? params.n_threads : common_cpu_get_num_math();
    std::vector<costs_case> cases;
    if (!params.device_info) {
        cases = costs_read_cases(params);
    }

    // the device of the MUL_MAT cases; GET_ROWS of the token embedding always runs on the CPU
    // (llama.cpp puts the input layer there)
    costs_backend cpu;
    costs_init_cpu(cpu, n_threads, params.repack);
    costs_backend gpu;
    costs_backend * main_be = &cpu;
    ggml_backend_dev_t dev = ggml_backend_dev_by_name(params.device.c_str());
    if (!dev) {
        std::string names;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            names += std::string(i ? ", " : "") + ggml_backend_dev_name(ggml_backend_dev_get(i));
        }
        costs_die("unknown device '" + params.device + "' (this build has: " + names + ")");
    }
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU || ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_IGPU) {
        gpu.dev     = dev;
        gpu.backend = ggml_backend_dev_init(dev, nullptr);
        if (!gpu.backend) {
            costs_die("cannot initialize device " + params.device);
        }
        gpu.bufts  = costs_gpu_bufts(dev);
        gpu.is_cpu = false;
        main_be = &gpu;
    } else if (dev != cpu.dev) {
        costs_die("device '" + params.device + "' is neither the CPU nor a GPU");
    }

    // every case is checked before any is timed
    std::vector<const costs_buft *> chosen;
    for (const auto & c : cases) {
        const costs_backend & be = c.op == GGML_OP_GET_ROWS ? cpu : *main_be;
        const costs_buft * b = costs_select_buft(c, be);
        if (!b) {
            costs_die(std::string(ggml_op_name(c.op)) + " of a " + ggml_type_name(c.type) + " [" + std::to_string(c.ne0) +
                      ", " + std::to_string(c.ne1) + "] weight is not supported on " + ggml_backend_dev_name(be.dev));
        }
        chosen.push_back(b);
    }

    costs_print_device_line(*main_be, params, n_threads);
    if (params.device_info) {
        costs_free_backend(gpu);
        costs_free_backend(cpu);
        return 0;
    }
    std::mt19937 rng(42);
    for (size_t i = 0; i < cases.size(); ++i) {
        const costs_case & c = cases[i];
        const costs_backend & be = c.op == GGML_OP_GET_ROWS ? cpu : *main_be;
        const costs_result r = costs_run_case(c, be, *chosen[i], params, rng);
        printf("{\"op\": \"%s\", \"type\": \"%s\", \"ne0\": %" PRId64 ", \"ne1\": %" PRId64 ", \"n\": %" PRId64
               ", \"device\": %s, \"buffer_type\": %s, \"threads\": %d, \"copies\": %" PRId64 ", \"repetitions\": %d"
               ", \"us\": %.3f, \"us_min\": %.3f, \"us_max\": %.3f}\n",
               c.op == GGML_OP_MUL_MAT ? "mul_mat" : "get_rows", ggml_type_name(c.type), c.ne0, c.ne1, c.n,
               costs_json_string(r.device).c_str(), costs_json_string(r.buft).c_str(), n_threads, r.copies,
               params.n_reps, r.us_median, r.us_min, r.us_max);
        fflush(stdout);
    }

    costs_free_backend(gpu);
    costs_free_backend(cpu);
    return 0;
}
