/* cli_opts.h -- table-driven option parsing for the kiln command: each
 * subcommand declares its options once, with defaults, accepted ranges and
 * help, and the same table drives parsing, defaults, range checks and
 * `kiln CMD --help`. */
#ifndef KILN_CLI_OPTS_H
#define KILN_CLI_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CLI_MAX_POS  4
#define CLI_MAX_OPTS 32 /* options per command; cli_parse refuses a larger table */

typedef struct cli_opt {
    const char *name; /* long name without "--" */
    char shortname;   /* 0 when none */
    const char *arg;  /* value placeholder, NULL for a flag */
    const char *def;  /* default value shown in help and used when absent; NULL = none */
    const char *help;
    /* Accepted range of a numeric value (each entry of a list), inclusive.
     * max == 0 means none declared: [0, UINT32_MAX] for cli_u32, [0,
     * UINT64_MAX] for cli_u64, [1, UINT32_MAX] for cli_u32_list. */
    uint64_t min, max;
} cli_opt;

typedef struct cli_cmd {
    const char *name;
    const char *usage; /* positional part, e.g. "BASE -o INDEX" */
    const char *summary;
    const cli_opt *opts; /* ended by {NULL} */
    size_t npos_min, npos_max;
} cli_cmd;

typedef struct cli_args {
    const cli_cmd *cmd;
    FILE *err; /* where the value checks below print their one-line errors */
    const char *pos[CLI_MAX_POS];
    size_t npos;
    const char *val[CLI_MAX_OPTS]; /* per option index: value given, NULL if absent */
    bool set[CLI_MAX_OPTS];
    char label[CLI_MAX_OPTS][40]; /* "-X" when given so, else "--name": what errors say */
} cli_args;

typedef enum cli_result {
    CLI_OK = 0,   /* parsed; run the command */
    CLI_HELP = 1, /* -h/--help given: the caller shows cli_help */
    CLI_USAGE = 2 /* usage error, one line already printed on err */
} cli_result;

/* Parses argv (the words after the subcommand) against cmd's table. Options
 * and positionals may mix; "--" ends the options; "--name=value", "--name
 * value", "-Xvalue" and "-X value" all work; a long name may be shortened
 * to any unambiguous prefix. Errors go to err as one line naming the option.
 * argv is borrowed: out points into it. */
cli_result cli_parse(const cli_cmd *cmd, int argc, char **argv, FILE *err, cli_args *out);
void cli_help(const cli_cmd *cmd, FILE *to);

/* Value of option `name`: given, else its default (NULL when neither). */
const char *cli_str(const cli_args *a, const char *name);
bool cli_flag(const cli_args *a, const char *name);
/* The option as the user wrote it ("-k" or "--k"), for error messages. */
const char *cli_opt_label(const cli_args *a, const char *name);
/* Strict numeric values in the table's range; on a bad value print an error
 * naming the option and the accepted range and return false. */
bool cli_u32(const cli_args *a, const char *name, uint32_t *out);
bool cli_u64(const cli_args *a, const char *name, uint64_t *out);
/* A size in bytes: a whole or decimal number with an optional binary
 * suffix K, M, G or T (also KB/KiB and the like; lower case too), e.g. 4G,
 * 1.5G, 512M, 1073741824. At least 1; on a bad value print an error naming
 * the option and return false. */
bool cli_size(const cli_args *a, const char *name, uint64_t *out);
/* A comma-separated list of numbers in the table's range (default [1,
 * UINT32_MAX]), at most max entries, no empty entry. */
bool cli_u32_list(const cli_args *a, const char *name, uint32_t *out, size_t max, size_t *n);

#endif /* KILN_CLI_OPTS_H */
