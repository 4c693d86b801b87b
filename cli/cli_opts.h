/* cli_opts.h -- table-driven option parsing for the kiln command: each
 * subcommand declares its options once, with defaults and help, and the
 * same table drives parsing, defaults and `kiln CMD --help`. */
#ifndef KILN_CLI_OPTS_H
#define KILN_CLI_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CLI_MAX_POS 4

typedef struct cli_opt {
    const char *name; /* long name without "--" */
    char shortname;   /* 0 when none */
    const char *arg;  /* value placeholder, NULL for a flag */
    const char *def;  /* default value shown in help and used when absent; NULL = none */
    const char *help;
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
    const char *pos[CLI_MAX_POS];
    size_t npos;
    const char *val[32]; /* per option index: value given, NULL if absent */
    bool set[32];
} cli_args;

/* Parses argv (after the subcommand). Returns 0, 1 for --help shown, or 2 on
 * a usage error (message already printed). */
int cli_parse(const cli_cmd *cmd, int argc, char **argv, cli_args *out);
void cli_help(const cli_cmd *cmd, FILE *to);

/* Value of option `name`: given, else its default (NULL when neither). */
const char *cli_str(const cli_args *a, const char *name);
bool cli_flag(const cli_args *a, const char *name);
/* Strict numeric values; on a bad value print an error and return false. */
bool cli_u32(const cli_args *a, const char *name, uint32_t *out);
bool cli_u64(const cli_args *a, const char *name, uint64_t *out);
/* A comma-separated list of positive integers, at most max entries. */
bool cli_u32_list(const cli_args *a, const char *name, uint32_t *out, size_t max, size_t *n);

#endif /* KILN_CLI_OPTS_H */
