/* hnswlib_runner.cpp -- the hnswlib reference side of kiln's build benchmarks.
 *
 * Builds an hnswlib::HierarchicalNSW<float> over a base set with the same
 * parameters kiln is given, times the build, then measures recall@k, QPS and
 * latency at a list of ef values exactly as `kiln eval` does, and prints one
 * JSON line for the build and one per ef (the keys of `kiln eval --json` plus
 * "system":"hnswlib"), so bench/bench_build.py can put the systems side by
 * side without knowing which produced a line.
 *
 * Usage (three modes):
 *   hnswlib_runner BASE QUERIES GT [options]       build, then evaluate
 *   hnswlib_runner --build-only BASE [--save FILE] [build options]
 *   hnswlib_runner --load FILE QUERIES GT [search options]
 * Build options: [--metric l2|ip|cos] [-M 16] [--ef-construction 200]
 *   [--threads T] [--seed S] [--save FILE]; search options: [--metric ...]
 *   [-k 10] [--ef 10,16,32,64,128] [--search-threads 1] [--eval-reps 1].
 *
 * Design decisions:
 *  1. Files are read through kiln's public C API (kiln_dataset_open and
 *     read_f32/read_i32), so the runner accepts every format kiln does and both
 *     systems see bit-identical floats. Reading is outside the timed region;
 *     only the insertion loop is timed.
 *  2. The parallel build copies hnswlib's Python bindings (ParallelFor): the
 *     first element is added alone, so the entry point exists before any
 *     concurrent insert, then std::threads pull element ids from one atomic
 *     counter. This is how hnswlib is normally driven, so it is the fair
 *     baseline; a hand-tuned schedule would measure something else.
 *  3. Cosine is "normalise, then inner product", as hnswlib's bindings and
 *     kiln's KILN_METRIC_COS do; queries are normalised the same way.
 *  4. Search is timed the way `kiln eval` times it: one warm-up pass over all
 *     queries, then queries one at a time (one searchKnn call each) spread over
 *     --search-threads threads through an atomic counter; QPS = queries / wall
 *     clock of the whole pass (steady_clock); per-query latency gives the mean
 *     and the p99 (nearest rank: the ceil(0.99 n)-th smallest).
 *     --eval-reps N repeats the whole ef list N times (one line per ef per
 *     pass), so a caller can take medians over passes spread across time.
 *  5. recall@k = mean over queries of |returned top-k ∩ first k ground-truth
 *     ids| / k, the definition `kiln eval` uses.
 *  6. Errors go to stderr as one line and exit status 1; stdout carries JSON
 *     only, so the orchestrator can parse it line by line.
 *  7. --build-only (build, save, exit) and --load (read a saved index,
 *     evaluate) split the two halves into separate processes, so a caller can
 *     time the whole build process from outside -- reading, building, saving --
 *     the way it times `kiln build`, with no evaluation inside the timed
 *     process. The build line also carries read_seconds and save_seconds.
 *     --load needs the build's --metric: it picks hnswlib's space and whether
 *     queries are normalised; the stored vectors already are. Its first
 *     line gives the loaded file's element count, max_elements and the
 *     elements marked deleted (hnswlib's loader counts them), which
 *     tests/test_hnswlib_file.c checks on kiln's exports.
 */

#include <hnswlib/hnswlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "kiln.h"

/* ==== Tunables ==== */

/* The defaults match `kiln build` / `kiln eval` (kiln_build_params_init and the
 * CLI's --ef default list), so a run with no options compares like with like. */
static const size_t DEFAULT_M = 16;
static const size_t DEFAULT_EF_CONSTRUCTION = 200;
static const size_t DEFAULT_K = 10;
static const char *const DEFAULT_EF_LIST = "10,16,32,64,128";
/* hnswlib's own default seed (HierarchicalNSW's random_seed = 100). */
static const uint64_t DEFAULT_SEED = 100;

/* ==== Types ==== */

namespace {

struct Options {
    const char *base = nullptr;
    const char *queries = nullptr;
    const char *groundtruth = nullptr;
    kiln_metric metric = KILN_METRIC_L2;
    size_t M = DEFAULT_M;
    size_t ef_construction = DEFAULT_EF_CONSTRUCTION;
    size_t threads = 0; /* 0 = all cores */
    size_t search_threads = 1;
    size_t eval_reps = 1; /* passes over the whole ef list */
    size_t k = DEFAULT_K;
    std::vector<size_t> ef_list;
    uint64_t seed = DEFAULT_SEED;
    const char *save = nullptr;
    bool build_only = false;
    const char *load = nullptr; /* evaluate this saved index instead of building */
};

/* A dense row-major matrix read from a dataset file. */
template <typename T> struct Matrix {
    std::vector<T> data;
    size_t n = 0, dim = 0;
    const T *row(size_t i) const { return data.data() + i * dim; }
};

/* Per-ef search figures, the fields of one `kiln eval --json` line. */
struct EvalResult {
    double recall, qps, mean_ms, p99_ms;
};

using Clock = std::chrono::steady_clock;

/* ==== Helpers ==== */

[[noreturn]] void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs("hnswlib_runner: ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
    std::exit(1);
}

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

size_t parse_size(const char *opt, const char *text) {
    char *end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-')
        die("%s: not a non-negative integer: '%s'", opt, text);
    return static_cast<size_t>(v);
}

std::vector<size_t> parse_ef_list(const char *text) {
    std::vector<size_t> out;
    std::string s(text);
    size_t start = 0;
    while (start <= s.size()) {
        const size_t comma = s.find(',', start);
        const std::string item =
            s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        const size_t ef = parse_size("--ef", item.c_str());
        if (ef == 0)
            die("--ef: values must be positive: '%s'", text);
        out.push_back(ef);
        if (comma == std::string::npos)
            break;
        start = comma + 1;
    }
    return out;
}

Options parse_args(int argc, char **argv) {
    Options o;
    std::vector<const char *> positional;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto value = [&]() -> const char * {
            if (i + 1 >= argc)
                die("%s needs a value", argv[i]);
            return argv[++i];
        };
        if (a == "--metric") {
            const char *m = value();
            if (kiln_metric_parse(m, &o.metric) != KILN_OK)
                die("--metric: unknown metric '%s' (l2, ip or cos)", m);
        } else if (a == "-M" || a == "--M") {
            o.M = parse_size("-M", value());
        } else if (a == "--ef-construction") {
            o.ef_construction = parse_size("--ef-construction", value());
        } else if (a == "--threads") {
            o.threads = parse_size("--threads", value());
        } else if (a == "--search-threads") {
            o.search_threads = parse_size("--search-threads", value());
        } else if (a == "-k") {
            o.k = parse_size("-k", value());
        } else if (a == "--ef") {
            o.ef_list = parse_ef_list(value());
        } else if (a == "--eval-reps") {
            o.eval_reps = parse_size("--eval-reps", value());
        } else if (a == "--seed") {
            o.seed = parse_size("--seed", value());
        } else if (a == "--save") {
            o.save = value();
        } else if (a == "--build-only") {
            o.build_only = true;
        } else if (a == "--load") {
            o.load = value();
        } else if (a == "-h" || a == "--help") {
            std::printf(
                "usage: hnswlib_runner BASE QUERIES GT [options]   build, then evaluate\n"
                "       hnswlib_runner --build-only BASE [options]  build (and --save) only\n"
                "       hnswlib_runner --load FILE QUERIES GT [options]  evaluate a saved "
                "index\n"
                "options: [--metric l2|ip|cos] [-M 16] [--ef-construction 200] "
                "[--threads T]\n"
                "  [-k 10] [--ef %s] [--search-threads 1] [--eval-reps 1] [--seed S]\n"
                "  [--save FILE]\n",
                DEFAULT_EF_LIST);
            std::exit(0);
        } else if (a.size() > 1 && a[0] == '-') {
            die("unknown option '%s'", argv[i]);
        } else {
            positional.push_back(argv[i]);
        }
    }
    if (o.build_only && o.load)
        die("--build-only and --load exclude each other");
    if (o.build_only) {
        if (positional.size() != 1)
            die("--build-only: expected BASE, got %zu positional arguments", positional.size());
        o.base = positional[0];
    } else if (o.load) {
        if (positional.size() != 2)
            die("--load: expected QUERIES GT, got %zu positional arguments", positional.size());
        if (o.save)
            die("--save does not go with --load");
        o.queries = positional[0];
        o.groundtruth = positional[1];
    } else {
        if (positional.size() != 3)
            die("expected BASE QUERIES GT, got %zu positional arguments", positional.size());
        o.base = positional[0];
        o.queries = positional[1];
        o.groundtruth = positional[2];
    }
    if (o.ef_list.empty())
        o.ef_list = parse_ef_list(DEFAULT_EF_LIST);
    if (o.M < 2)
        die("-M must be at least 2, got %zu", o.M);
    if (o.k == 0)
        die("-k must be positive");
    if (o.threads == 0)
        o.threads = std::max(1u, std::thread::hardware_concurrency());
    if (o.search_threads == 0)
        o.search_threads = std::max(1u, std::thread::hardware_concurrency());
    return o;
}

/* ==== Reading datasets through kiln ==== */

Matrix<float> read_f32(kiln_ctx *ctx, const char *path) {
    kiln_dataset *ds = nullptr;
    if (kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds) != KILN_OK)
        die("%s", kiln_errmsg(ctx));
    Matrix<float> m;
    m.n = kiln_dataset_count(ds);
    m.dim = kiln_dataset_dim(ds);
    m.data.resize(m.n * m.dim);
    const kiln_status st = kiln_dataset_read_f32(ds, 0, m.n, m.data.data());
    kiln_dataset_free(ds);
    if (st != KILN_OK)
        die("%s", kiln_errmsg(ctx));
    return m;
}

Matrix<int32_t> read_i32(kiln_ctx *ctx, const char *path) {
    kiln_dataset *ds = nullptr;
    if (kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds) != KILN_OK)
        die("%s", kiln_errmsg(ctx));
    Matrix<int32_t> m;
    m.n = kiln_dataset_count(ds);
    m.dim = kiln_dataset_dim(ds);
    m.data.resize(m.n * m.dim);
    const kiln_status st = kiln_dataset_read_i32(ds, 0, m.n, m.data.data());
    kiln_dataset_free(ds);
    if (st != KILN_OK)
        die("%s", kiln_errmsg(ctx));
    return m;
}

/* Rows with zero norm are left as they are: their cosine is undefined and
 * both systems then see the same zero vector. */
void normalise_rows(Matrix<float> &m) {
    for (size_t i = 0; i < m.n; i++) {
        float *r = m.data.data() + i * m.dim;
        double s = 0;
        for (size_t j = 0; j < m.dim; j++)
            s += static_cast<double>(r[j]) * r[j];
        if (s > 0) {
            const float inv = static_cast<float>(1.0 / std::sqrt(s));
            for (size_t j = 0; j < m.dim; j++)
                r[j] *= inv;
        }
    }
}

/* ==== Parallel build ==== */

/* hnswlib's ParallelFor from python_bindings/bindings.cpp: ids handed out by
 * an atomic counter; the first exception stops the others and is rethrown. */
template <class Fn> void parallel_for(size_t start, size_t end, size_t threads, Fn fn) {
    if (threads <= 1) {
        for (size_t id = start; id < end; id++)
            fn(id, 0);
        return;
    }
    std::vector<std::thread> pool;
    std::atomic<size_t> current(start);
    std::exception_ptr last_exception = nullptr;
    std::mutex last_except_mutex;
    for (size_t t = 0; t < threads; t++) {
        pool.emplace_back([&, t] {
            for (;;) {
                const size_t id = current.fetch_add(1);
                if (id >= end)
                    break;
                try {
                    fn(id, t);
                } catch (...) {
                    std::unique_lock<std::mutex> lock(last_except_mutex);
                    last_exception = std::current_exception();
                    current = end; /* make the other threads stop */
                    break;
                }
            }
        });
    }
    for (auto &th : pool)
        th.join();
    if (last_exception)
        std::rethrow_exception(last_exception);
}

/* ==== Search measurement ==== */

EvalResult evaluate(const hnswlib::HierarchicalNSW<float> &index, const Matrix<float> &queries,
                    const Matrix<int32_t> &gt, size_t k, size_t threads) {
    const size_t nq = queries.n;
    std::vector<std::vector<hnswlib::labeltype>> found(nq);
    std::vector<double> latency_ms(nq);

    auto run_pass = [&](bool record) {
        std::atomic<size_t> next(0);
        auto worker = [&] {
            for (;;) {
                const size_t q = next.fetch_add(1);
                if (q >= nq)
                    break;
                const Clock::time_point t0 = Clock::now();
                auto pq = index.searchKnn(queries.row(q), k);
                const double ms = seconds_since(t0) * 1e3;
                if (record) {
                    latency_ms[q] = ms;
                    auto &out = found[q];
                    out.clear();
                    while (!pq.empty()) {
                        out.push_back(pq.top().second);
                        pq.pop();
                    }
                }
            }
        };
        if (threads <= 1) {
            worker();
            return;
        }
        std::vector<std::thread> pool;
        for (size_t t = 0; t < threads; t++)
            pool.emplace_back(worker);
        for (auto &th : pool)
            th.join();
    };

    run_pass(false); /* warm-up: caches, page faults, visited-list pool */
    const Clock::time_point t0 = Clock::now();
    run_pass(true);
    const double wall = seconds_since(t0);

    size_t hits = 0;
    for (size_t q = 0; q < nq; q++) {
        const std::unordered_set<int64_t> truth(gt.row(q), gt.row(q) + k);
        for (const hnswlib::labeltype id : found[q])
            hits += truth.count(static_cast<int64_t>(id));
    }
    EvalResult r;
    r.recall = nq ? static_cast<double>(hits) / (static_cast<double>(nq) * k) : 0.0;
    r.qps = wall > 0 ? static_cast<double>(nq) / wall : 0.0;
    double sum = 0;
    for (const double ms : latency_ms)
        sum += ms;
    r.mean_ms = nq ? sum / static_cast<double>(nq) : 0.0;
    std::sort(latency_ms.begin(), latency_ms.end());
    const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(nq)));
    r.p99_ms = nq ? latency_ms[std::max<size_t>(rank, 1) - 1] : 0.0;
    return r;
}

} // namespace

/* ==== Modes ==== */

namespace {

std::unique_ptr<hnswlib::SpaceInterface<float>> make_space(kiln_metric metric, size_t dim) {
    if (metric == KILN_METRIC_L2)
        return std::unique_ptr<hnswlib::SpaceInterface<float>>(new hnswlib::L2Space(dim));
    return std::unique_ptr<hnswlib::SpaceInterface<float>>(new hnswlib::InnerProductSpace(dim));
}

/* Queries and ground truth, checked against each other and the index's
 * dimension; queries normalised for cosine. */
struct EvalSet {
    Matrix<float> queries;
    Matrix<int32_t> gt;
};

EvalSet read_eval_set(kiln_ctx *ctx, const Options &o, size_t dim) {
    EvalSet e;
    e.queries = read_f32(ctx, o.queries);
    e.gt = read_i32(ctx, o.groundtruth);
    if (dim != 0 && e.queries.dim != dim)
        die("%s: dimension %zu differs from the base's %zu", o.queries, e.queries.dim, dim);
    if (e.gt.n < e.queries.n)
        die("%s: %zu ground-truth rows for %zu queries", o.groundtruth, e.gt.n, e.queries.n);
    if (e.gt.dim < o.k)
        die("%s: %zu ground-truth ids per query, fewer than k = %zu", o.groundtruth, e.gt.dim, o.k);
    if (o.metric == KILN_METRIC_COS)
        normalise_rows(e.queries);
    return e;
}

void evaluate_all(hnswlib::HierarchicalNSW<float> &index, const EvalSet &e, const Options &o) {
    for (size_t pass = 0; pass < o.eval_reps; pass++) {
        for (const size_t ef : o.ef_list) {
            index.setEf(ef);
            const EvalResult r = evaluate(index, e.queries, e.gt, o.k, o.search_threads);
            std::printf("{\"system\":\"hnswlib\",\"ef\":%zu,\"k\":%zu,\"recall\":%.6f,"
                        "\"qps\":%.3f,\"mean_ms\":%.6f,\"p99_ms\":%.6f,\"threads\":%zu}\n",
                        ef, o.k, r.recall, r.qps, r.mean_ms, r.p99_ms, o.search_threads);
            std::fflush(stdout);
        }
    }
}

/* --load: read a saved index and evaluate it. */
int run_load(const Options &o) {
    kiln_ctx *ctx = nullptr;
    if (kiln_ctx_new(&ctx) != KILN_OK)
        die("kiln_ctx_new failed");
    const EvalSet e = read_eval_set(ctx, o, 0);
    kiln_ctx_free(ctx);

    const std::unique_ptr<hnswlib::SpaceInterface<float>> space =
        make_space(o.metric, e.queries.dim);
    std::unique_ptr<hnswlib::HierarchicalNSW<float>> index;
    const Clock::time_point t0 = Clock::now();
    try {
        index.reset(new hnswlib::HierarchicalNSW<float>(space.get(), std::string(o.load)));
    } catch (const std::exception &ex) {
        die("%s: loading the index failed: %s", o.load, ex.what());
    }
    /* Counted here: 0.6.2's loading constructor never zeroes num_deleted_
     * before loadIndex adds to it. */
    size_t deleted = 0;
    for (size_t i = 0; i < index->cur_element_count; i++)
        deleted += index->isMarkedDeleted(static_cast<hnswlib::tableint>(i));
    std::printf("{\"system\":\"hnswlib\",\"load_seconds\":%.6f,\"count\":%zu,"
                "\"max_elements\":%zu,\"deleted\":%zu,\"dim\":%zu,\"metric\":\"%s\"}\n",
                seconds_since(t0), static_cast<size_t>(index->cur_element_count),
                index->max_elements_, deleted, e.queries.dim, kiln_metric_name(o.metric));
    std::fflush(stdout);
    evaluate_all(*index, e, o);
    return 0;
}

/* Build (and --save), then evaluate unless --build-only. */
int run_build(const Options &o) {
    kiln_ctx *ctx = nullptr;
    if (kiln_ctx_new(&ctx) != KILN_OK)
        die("kiln_ctx_new failed");
    const Clock::time_point t_read = Clock::now();
    Matrix<float> base = read_f32(ctx, o.base);
    const double read_seconds = seconds_since(t_read);
    if (base.n == 0)
        die("%s: no vectors", o.base);
    EvalSet e;
    if (!o.build_only)
        e = read_eval_set(ctx, o, base.dim);
    kiln_ctx_free(ctx);
    if (o.metric == KILN_METRIC_COS)
        normalise_rows(base);

    const std::unique_ptr<hnswlib::SpaceInterface<float>> space = make_space(o.metric, base.dim);
    std::unique_ptr<hnswlib::HierarchicalNSW<float>> index;
    double build_seconds = 0;
    try {
        const Clock::time_point t0 = Clock::now();
        index.reset(new hnswlib::HierarchicalNSW<float>(space.get(), base.n, o.M, o.ef_construction,
                                                        o.seed));
        index->addPoint(base.row(0), 0);
        parallel_for(1, base.n, o.threads,
                     [&](size_t id, size_t) { index->addPoint(base.row(id), id); });
        build_seconds = seconds_since(t0);
    } catch (const std::exception &ex) {
        die("hnswlib build failed: %s", ex.what());
    }

    double save_seconds = 0;
    if (o.save) {
        const Clock::time_point t0 = Clock::now();
        try {
            index->saveIndex(o.save);
        } catch (const std::exception &ex) {
            die("%s: saving the index failed: %s", o.save, ex.what());
        }
        save_seconds = seconds_since(t0);
    }

    std::printf("{\"system\":\"hnswlib\",\"build_seconds\":%.6f,\"read_seconds\":%.6f,"
                "\"save_seconds\":%.6f,\"count\":%zu,\"dim\":%zu,\"metric\":\"%s\","
                "\"threads\":%zu,\"M\":%zu,\"ef_construction\":%zu,\"seed\":%llu}\n",
                build_seconds, read_seconds, save_seconds, base.n, base.dim,
                kiln_metric_name(o.metric), o.threads, o.M, o.ef_construction,
                static_cast<unsigned long long>(o.seed));
    std::fflush(stdout);

    if (!o.build_only)
        evaluate_all(*index, e, o);
    return 0;
}

} // namespace

/* ==== Main ==== */

int main(int argc, char **argv) {
    const Options o = parse_args(argc, argv);
    return o.load ? run_load(o) : run_build(o);
}
