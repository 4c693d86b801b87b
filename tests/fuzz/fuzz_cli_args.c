/* fuzz_cli_args.c -- fuzz target for the kiln command's option parser
 * (cli/cli_opts.c).
 *
 * The input is split at NUL bytes into argv words; its first byte picks one
 * of two option tables. Whatever parses is then read back through every
 * accessor (strings, flags, numbers, lists), and the results are checked
 * against what the parser promises: positionals within the command's bounds
 * and pointing into argv, numbers within the declared range, lists without
 * empty or out-of-range entries. Usage errors are fine; crashes, reads past
 * a word and broken promises are not (abort).
 *
 * Design decisions:
 *  1. The tables are this target's own, not kiln_main.c's (those are static
 *     there): one shaped like build (prefix clashes: metric/method, M, a
 *     short option per numeric kind, flags) and one like eval (a list
 *     option, an exact name that is a prefix of another: ef/ef-construction).
 *  2. Messages go to /dev/null: the parser takes its error stream, so
 *     libFuzzer's own output stays readable.
 *  3. Seeds are argument lists users type, including each convention (--,
 *     -k3, --name=value, prefixes, ambiguous prefixes, lists with empty
 *     entries), built here; tests/fuzz/corpus/fuzz_cli_args holds the same
 *     for a libFuzzer run.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cli/cli_opts.h"
#include "fuzz.h"

/* ==== Tunables ==== */

/* Words per input: more than any command line has options and values. */
#define FUZZ_MAX_WORDS 64
/* Entries a list may hold, as kiln eval allows. */
#define FUZZ_MAX_LIST 32

/* ==== Tables ==== */

static const cli_opt build_like[] = {{"output", 'o', "FILE", NULL, "output", 0, 0},
                                     {"metric", 0, "l2|ip|cos", "l2", "distance", 0, 0},
                                     {"method", 0, "device|insert", "device", "method", 0, 0},
                                     {"M", 'M', "N", "16", "degree", 2, 1024},
                                     {"ef-construction", 0, "N", "200", "beam", 1, UINT32_MAX},
                                     {"threads", 't', "N", "0", "threads", 0, 4096},
                                     {"seed", 0, "N", "1", "seed", 0, 0},
                                     {"progress", 0, NULL, NULL, "progress", 0, 0},
                                     {"json", 0, NULL, NULL, "json", 0, 0},
                                     {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd build_like_cmd = {"build", "BASE -o FILE", "build-like", build_like, 1, 1};

static const cli_opt eval_like[] = {{"k", 'k', "N", "10", "k", 1, UINT32_MAX},
                                    {"ef", 0, "LIST", "10,16,32", "list", 1, UINT32_MAX},
                                    {"ef-construction", 0, "N", NULL, "no default", 0, 0},
                                    {"repeat", 0, "N", "1", "repeat", 1, 1000},
                                    {"n", 'n', "N", "5", "u64", 0, 0},
                                    {"header", 0, NULL, NULL, "clashes with --help", 0, 0},
                                    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd eval_like_cmd = {"eval", "A B C", "eval-like", eval_like, 0, 3};

/* ==== Checks ==== */

static void check_numbers(const cli_args *a) {
    for (int i = 0; a->cmd->opts[i].name; i++) {
        const cli_opt *o = &a->cmd->opts[i];
        const char *s = cli_str(a, o->name);
        if (a->set[i] && o->arg && !a->val[i])
            abort(); /* a value option that was given has its value */
        if (!o->arg || !s)
            continue;
        const uint64_t lo = o->max ? o->min : 0;
        uint32_t v32;
        if (cli_u32(a, o->name, &v32) && (v32 < lo || (o->max && v32 > o->max)))
            abort();
        uint64_t v64;
        if (cli_u64(a, o->name, &v64) && (v64 < lo || (o->max && v64 > o->max)))
            abort();
        uint32_t list[FUZZ_MAX_LIST];
        size_t n = 0;
        if (cli_u32_list(a, o->name, list, FUZZ_MAX_LIST, &n)) {
            const uint64_t llo = o->max ? o->min : 1;
            if (n == 0 || n > FUZZ_MAX_LIST)
                abort();
            for (size_t j = 0; j < n; j++)
                if (list[j] < llo || (o->max && list[j] > o->max))
                    abort();
        }
        if (strlen(cli_opt_label(a, o->name)) < 2)
            abort();
    }
}

/* ==== Target ==== */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *sink;
    if (!sink && !(sink = fopen("/dev/null", "w")))
        return 0;
    if (size == 0)
        return 0;
    const cli_cmd *cmd = data[0] & 1 ? &eval_like_cmd : &build_like_cmd;
    /* Words as separate exact-size allocations, so ASan sees a read past
     * the end of any one of them. */
    char *words[FUZZ_MAX_WORDS];
    int argc = 0;
    size_t start = 1;
    while (start < size && argc < FUZZ_MAX_WORDS) {
        const uint8_t *nul = memchr(data + start, 0, size - start);
        size_t len = nul ? (size_t)(nul - (data + start)) : size - start;
        words[argc] = malloc(len + 1);
        if (!words[argc])
            abort();
        memcpy(words[argc], data + start, len);
        words[argc][len] = '\0';
        argc++;
        start += len + 1;
    }
    cli_args a;
    cli_result r = cli_parse(cmd, argc, words, sink, &a);
    if (r == CLI_OK) {
        if (a.npos < cmd->npos_min || a.npos > cmd->npos_max || a.npos > CLI_MAX_POS)
            abort();
        for (size_t i = 0; i < a.npos; i++) {
            bool found = false;
            for (int w = 0; w < argc; w++)
                found |= a.pos[i] == words[w];
            if (!found)
                abort(); /* a positional is one of the words, not a copy or a part */
        }
        check_numbers(&a);
        (void)cli_flag(&a, "json");
    } else if (r == CLI_HELP) {
        cli_help(cmd, sink);
    } else if (r != CLI_USAGE) {
        abort();
    }
    for (int w = 0; w < argc; w++)
        free(words[w]);
    return 0;
}

/* ==== Seeds ==== */

/* Each seed: the table byte, then the words joined by '|' (turned into NUL). */
static const char *const fuzz_seeds[] = {
    "0b.fvecs|-o|x.kiln",
    "0b.fvecs|-ox.kiln|-M5000|--ef-con=50|--prog",
    "0--me|l2|b.fvecs|-o|x",
    "0-t|4096|--threads=4097|--|-b.fvecs|-o",
    "0--seed|18446744073709551615|b|--output=o|--json",
    "0--metric=|b|-o|o|--M|abc",
    "1a|b|c|--ef|1,,2|-k3|--repeat|1000",
    "1--ef|5,|--ef=,5|--ef|10,16,32,64,128|-n|99999999999999999999",
    "1--he|--h|--help",
    "1--ef-c|7|-h|-k|--|--k",
};

int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    if (i >= sizeof fuzz_seeds / sizeof fuzz_seeds[0])
        return 0;
    const char *s = fuzz_seeds[i];
    size_t n = strlen(s);
    uint8_t *b = malloc(n);
    if (!b)
        return 0;
    b[0] = (uint8_t)(s[0] - '0');
    for (size_t j = 1; j < n; j++)
        b[j] = s[j] == '|' ? 0 : (uint8_t)s[j];
    *buf = b;
    *len = n;
    return 1;
}
