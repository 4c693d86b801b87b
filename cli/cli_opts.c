/* cli_opts.c -- see cli_opts.h.
 *
 * Design decisions:
 *  1. Every value is validated strictly (the whole string is decimal digits,
 *     no sign, no spaces, within the range the table declares), and an error
 *     names the option as the user wrote it, the value and the accepted
 *     range: "kiln build: -M: '5000' is out of range [2, 1024]". The range
 *     is the one the library accepts, so a value the CLI lets through is not
 *     refused later as a runtime error with another exit code.
 *  2. The usual conventions: --name=value, --name value, -Xvalue and -X
 *     value; "--" ends the options; "-" alone is a positional; a long name
 *     may be shortened to a prefix that names one option ("--ef-con"), an
 *     exact name always wins over prefixes ("--ef" in search), and an
 *     ambiguous prefix is a usage error listing the candidates.
 *  3. Our own parser, not getopt_long: the table already drives help,
 *     defaults and ranges, and getopt_long would need a second array built
 *     from it; it keeps global state (optind, its internal position), which
 *     a fuzz target calling the parser millions of times in one process and
 *     the tests cannot reset portably; it permutes argv; and it prints its
 *     own messages in its own words rather than "kiln CMD: ...". The prefix
 *     rule is a dozen lines here.
 *  4. The parser prints nothing but one error line, on the stream the caller
 *     gives (the fuzz target passes /dev/null); --help is returned to the
 *     caller, which prints the help.
 *  5. List entries (--ef 10,64) are split by hand: strtok would skip empty
 *     entries and accept "1,,2" or "5," silently.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"

/* ==== Helpers ==== */

static int opt_count(const cli_cmd *cmd) {
    int n = 0;
    while (cmd->opts[n].name)
        n++;
    return n;
}

static int opt_index(const cli_cmd *cmd, const char *name) {
    for (int i = 0; cmd->opts[i].name; i++)
        if (strcmp(cmd->opts[i].name, name) == 0)
            return i;
    return -1;
}

/* The long option named by the len bytes at s: an exact name, else the one
 * option it is a prefix of. Returns the index, CLI_MAX_OPTS for "help", -1
 * when none matches and -2 (after printing the candidates) when several do. */
static int long_index(const cli_cmd *cmd, const char *s, size_t len, FILE *err) {
    static const char help[] = "help";
    int found = -1, matches = 0;
    if (len == 0)
        return -1;
    for (int i = 0; cmd->opts[i].name; i++) {
        const char *name = cmd->opts[i].name;
        if (strncmp(name, s, len) != 0)
            continue;
        if (name[len] == '\0')
            return i;
        found = i;
        matches++;
    }
    if (len == strlen(help) && strncmp(help, s, len) == 0)
        return CLI_MAX_OPTS;
    bool help_matches = len < strlen(help) && strncmp(help, s, len) == 0;
    if (help_matches) {
        found = CLI_MAX_OPTS;
        matches++;
    }
    if (matches <= 1)
        return found;
    fprintf(err, "kiln %s: --%.*s is ambiguous: it could be", cmd->name, (int)len, s);
    const char *sep = " ";
    for (int i = 0; cmd->opts[i].name; i++)
        if (strncmp(cmd->opts[i].name, s, len) == 0) {
            fprintf(err, "%s--%s", sep, cmd->opts[i].name);
            sep = ", ";
        }
    if (help_matches)
        fprintf(err, "%s--help", sep);
    fputc('\n', err);
    return -2;
}

static int short_index(const cli_cmd *cmd, char c) {
    for (int i = 0; cmd->opts[i].name; i++)
        if (cmd->opts[i].shortname == c)
            return i;
    return c == 'h' ? CLI_MAX_OPTS : -1;
}

/* ==== Public: parse and help ==== */

void cli_help(const cli_cmd *cmd, FILE *to) {
    fprintf(to, "usage: kiln %s %s\n\n%s\n\noptions:\n", cmd->name, cmd->usage, cmd->summary);
    for (int i = 0; cmd->opts[i].name; i++) {
        const cli_opt *o = &cmd->opts[i];
        char left[64];
        if (o->shortname)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->shortname, o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        fprintf(to, "  %-30s %s", left, o->help);
        if (o->def)
            fprintf(to, " (default: %s)", o->def);
        fputc('\n', to);
    }
    fprintf(to, "  %-30s %s\n", "-h, --help", "show this help");
    fprintf(to, "\nLong options may be shortened to an unambiguous prefix; -- ends the options.\n");
}

cli_result cli_parse(const cli_cmd *cmd, int argc, char **argv, FILE *err, cli_args *out) {
    memset(out, 0, sizeof *out);
    out->cmd = cmd;
    out->err = err;
    const int nopts = opt_count(cmd);
    if (nopts > CLI_MAX_OPTS) {
        fprintf(err, "kiln %s: too many options in the command's table\n", cmd->name);
        return CLI_USAGE;
    }
    for (int i = 0; i < nopts; i++)
        snprintf(out->label[i], sizeof out->label[i], "--%s", cmd->opts[i].name);
    bool options_done = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || a[1] == '\0') {
            if (out->npos >= CLI_MAX_POS || out->npos >= cmd->npos_max) {
                fprintf(err, "kiln %s: unexpected argument '%s' (see kiln help %s)\n", cmd->name, a,
                        cmd->name);
                return CLI_USAGE;
            }
            out->pos[out->npos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            options_done = true;
            continue;
        }
        int idx;
        const char *inline_val = NULL;
        bool is_short = a[1] != '-';
        if (!is_short) {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
            idx = long_index(cmd, a + 2, len, err);
            if (idx == -2)
                return CLI_USAGE;
            inline_val = eq ? eq + 1 : NULL;
        } else {
            idx = short_index(cmd, a[1]);
            inline_val = a[2] ? a + 2 : NULL;
        }
        if (idx < 0) {
            fprintf(err, "kiln %s: unknown option '%s' (see kiln help %s)\n", cmd->name, a,
                    cmd->name);
            return CLI_USAGE;
        }
        if (idx == CLI_MAX_OPTS) {
            if (inline_val) {
                fprintf(err, "kiln %s: %s takes no value\n", cmd->name, is_short ? "-h" : "--help");
                return CLI_USAGE;
            }
            return CLI_HELP;
        }
        const cli_opt *o = &cmd->opts[idx];
        if (is_short)
            snprintf(out->label[idx], sizeof out->label[idx], "-%c", o->shortname);
        else
            snprintf(out->label[idx], sizeof out->label[idx], "--%s", o->name);
        if (!o->arg) {
            if (inline_val) {
                fprintf(err, "kiln %s: %s takes no value\n", cmd->name, out->label[idx]);
                return CLI_USAGE;
            }
            out->set[idx] = true;
            continue;
        }
        if (!inline_val) {
            if (i + 1 >= argc) {
                fprintf(err, "kiln %s: %s needs a value %s\n", cmd->name, out->label[idx], o->arg);
                return CLI_USAGE;
            }
            inline_val = argv[++i];
        }
        out->val[idx] = inline_val;
        out->set[idx] = true;
    }
    if (out->npos < cmd->npos_min) {
        fprintf(err, "kiln %s: missing arguments; usage: kiln %s %s\n", cmd->name, cmd->name,
                cmd->usage);
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* ==== Public: values ==== */

const char *cli_str(const cli_args *a, const char *name) {
    int i = opt_index(a->cmd, name);
    if (i < 0)
        return NULL;
    return a->val[i] ? a->val[i] : a->cmd->opts[i].def;
}

bool cli_flag(const cli_args *a, const char *name) {
    int i = opt_index(a->cmd, name);
    return i >= 0 && a->set[i];
}

const char *cli_opt_label(const cli_args *a, const char *name) {
    int i = opt_index(a->cmd, name);
    return i >= 0 ? a->label[i] : name;
}

/* Parses the len bytes at s as a decimal number in [min, max]; prints the
 * error for option i of a. */
static bool parse_num(const cli_args *a, int i, const char *s, size_t len, uint64_t min,
                      uint64_t max, uint64_t *out) {
    const char *cmd = a->cmd->name, *label = a->label[i];
    uint64_t v = 0;
    bool digits = len > 0, overflow = false;
    for (size_t j = 0; j < len && digits; j++) {
        if (s[j] < '0' || s[j] > '9')
            digits = false;
        else if (v > (UINT64_MAX - (uint64_t)(s[j] - '0')) / 10)
            overflow = true;
        else
            v = v * 10 + (uint64_t)(s[j] - '0');
    }
    if (!digits) {
        fprintf(a->err, "kiln %s: %s: '%.*s' is not a number\n", cmd, label, (int)len, s);
        return false;
    }
    if (overflow || v < min || v > max) {
        fprintf(a->err, "kiln %s: %s: '%.*s' is out of range [%llu, %llu]\n", cmd, label, (int)len,
                s, (unsigned long long)min, (unsigned long long)max);
        return false;
    }
    *out = v;
    return true;
}

/* The value of option `name` and its index, or NULL after the message. */
static const char *opt_value(const cli_args *a, const char *name, int *index) {
    *index = opt_index(a->cmd, name);
    const char *s = cli_str(a, name);
    if (*index < 0 || !s) {
        fprintf(a->err, "kiln %s: --%s needs a value\n", a->cmd->name, name);
        return NULL;
    }
    return s;
}

/* The range option i declares, else [dflt_min, dflt_max]; capped at dflt_max. */
static void opt_range(const cli_args *a, int i, uint64_t dflt_min, uint64_t dflt_max, uint64_t *lo,
                      uint64_t *hi) {
    const cli_opt *o = &a->cmd->opts[i];
    *lo = o->max ? o->min : dflt_min;
    *hi = o->max && o->max < dflt_max ? o->max : dflt_max;
}

/* The value of option `name` in its declared range (else [0, dflt_max]). */
static bool opt_num(const cli_args *a, const char *name, uint64_t dflt_max, uint64_t *out) {
    int i;
    const char *s = opt_value(a, name, &i);
    if (!s)
        return false;
    uint64_t min, max;
    opt_range(a, i, 0, dflt_max, &min, &max);
    return parse_num(a, i, s, strlen(s), min, max, out);
}

bool cli_u64(const cli_args *a, const char *name, uint64_t *out) {
    return opt_num(a, name, UINT64_MAX, out);
}

bool cli_u32(const cli_args *a, const char *name, uint32_t *out) {
    uint64_t v;
    if (!opt_num(a, name, UINT32_MAX, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

bool cli_size(const cli_args *a, const char *name, uint64_t *out) {
    int i;
    const char *s = opt_value(a, name, &i);
    if (!s)
        return false;
    const char *p = s;
    uint64_t whole = 0;
    double frac = 0, scale = 0.1;
    bool digits = false, ok = true;
    while (*p >= '0' && *p <= '9') {
        if (whole > (UINT64_MAX - 9) / 10)
            ok = false;
        whole = whole * 10 + (uint64_t)(*p++ - '0');
        digits = true;
    }
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            frac += scale * (*p++ - '0');
            scale /= 10;
            digits = true;
        }
    }
    unsigned shift = 0;
    switch (*p) {
    case 'k':
    case 'K':
        shift = 10;
        p++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        p++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        p++;
        break;
    case 't':
    case 'T':
        shift = 40;
        p++;
        break;
    default: break;
    }
    if (shift && (*p == 'i' || *p == 'I'))
        p++;
    if (*p == 'b' || *p == 'B')
        p++;
    const double bytes = ((double)whole + frac) * (double)((uint64_t)1 << shift);
    if (!digits || *p || !ok || bytes < 1 || bytes >= 18446744073709551615.0) {
        fprintf(a->err,
                "kiln %s: %s: '%s' is not a size of at least 1 byte (e.g. 4G, 1.5G, 512M)\n",
                a->cmd->name, a->label[i], s);
        return false;
    }
    *out = (uint64_t)bytes;
    return true;
}

bool cli_u32_list(const cli_args *a, const char *name, uint32_t *out, size_t max, size_t *n) {
    int i;
    const char *s = opt_value(a, name, &i);
    *n = 0;
    if (!s)
        return false;
    uint64_t lo, hi;
    opt_range(a, i, 1, UINT32_MAX, &lo, &hi);
    for (const char *tok = s;; tok++) {
        const char *comma = strchr(tok, ',');
        size_t len = comma ? (size_t)(comma - tok) : strlen(tok);
        if (len == 0) {
            fprintf(a->err, "kiln %s: %s: empty entry in the list '%s'\n", a->cmd->name,
                    a->label[i], s);
            return false;
        }
        if (*n >= max) {
            fprintf(a->err, "kiln %s: %s: more than %zu values\n", a->cmd->name, a->label[i], max);
            return false;
        }
        uint64_t v;
        if (!parse_num(a, i, tok, len, lo, hi, &v))
            return false;
        out[(*n)++] = (uint32_t)v;
        if (!comma)
            break;
        tok = comma;
    }
    return true;
}
