/* cli_opts.c -- see cli_opts.h.
 *
 * Design decisions:
 *  1. Every value is validated strictly (whole string numeric, in range), and
 *     an error names the option and the value: "kiln build: -M: 'x' is not a
 *     number".
 *  2. --name=value and --name value, -X value are all accepted.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"

static int opt_index(const cli_cmd *cmd, const char *name) {
    for (int i = 0; cmd->opts[i].name; i++)
        if (strcmp(cmd->opts[i].name, name) == 0)
            return i;
    return -1;
}

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
}

int cli_parse(const cli_cmd *cmd, int argc, char **argv, cli_args *out) {
    memset(out, 0, sizeof *out);
    out->cmd = cmd;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_help(cmd, stdout);
            return 1;
        }
        if (a[0] != '-' || a[1] == '\0') {
            if (out->npos >= CLI_MAX_POS || out->npos >= cmd->npos_max) {
                fprintf(stderr, "kiln %s: unexpected argument '%s' (see kiln %s --help)\n",
                        cmd->name, a, cmd->name);
                return 2;
            }
            out->pos[out->npos++] = a;
            continue;
        }
        int idx = -1;
        const char *inline_val = NULL;
        if (a[1] == '-') {
            char name[64];
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
            if (len < sizeof name) {
                memcpy(name, a + 2, len);
                name[len] = '\0';
                idx = opt_index(cmd, name);
            }
            inline_val = eq ? eq + 1 : NULL;
        } else if (a[2] == '\0') {
            for (int j = 0; cmd->opts[j].name; j++)
                if (cmd->opts[j].shortname == a[1])
                    idx = j;
        }
        if (idx < 0) {
            fprintf(stderr, "kiln %s: unknown option '%s' (see kiln %s --help)\n", cmd->name, a,
                    cmd->name);
            return 2;
        }
        const cli_opt *o = &cmd->opts[idx];
        if (!o->arg) {
            if (inline_val) {
                fprintf(stderr, "kiln %s: --%s takes no value\n", cmd->name, o->name);
                return 2;
            }
            out->set[idx] = true;
            continue;
        }
        if (!inline_val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln %s: %s needs a value %s\n", cmd->name, a, o->arg);
                return 2;
            }
            inline_val = argv[++i];
        }
        out->val[idx] = inline_val;
        out->set[idx] = true;
    }
    if (out->npos < cmd->npos_min) {
        fprintf(stderr, "kiln %s: missing arguments; usage: kiln %s %s\n", cmd->name, cmd->name,
                cmd->usage);
        return 2;
    }
    return 0;
}

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

static bool parse_u64(const char *cmd, const char *name, const char *s, uint64_t max,
                      uint64_t *out) {
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') {
        fprintf(stderr, "kiln %s: --%s: '%s' is not a non-negative number\n", cmd, name,
                s ? s : "");
        return false;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno == ERANGE || v > max) {
        fprintf(stderr, "kiln %s: --%s: '%s' is not a number in [0, %llu]\n", cmd, name, s,
                (unsigned long long)max);
        return false;
    }
    *out = v;
    return true;
}

bool cli_u64(const cli_args *a, const char *name, uint64_t *out) {
    return parse_u64(a->cmd->name, name, cli_str(a, name), UINT64_MAX, out);
}

bool cli_u32(const cli_args *a, const char *name, uint32_t *out) {
    uint64_t v;
    if (!parse_u64(a->cmd->name, name, cli_str(a, name), UINT32_MAX, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

bool cli_u32_list(const cli_args *a, const char *name, uint32_t *out, size_t max, size_t *n) {
    const char *s = cli_str(a, name);
    char buf[256];
    *n = 0;
    if (!s || strlen(s) >= sizeof buf) {
        fprintf(stderr, "kiln %s: --%s: bad list\n", a->cmd->name, name);
        return false;
    }
    strcpy(buf, s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        uint64_t v = 1;
        if (*n >= max) {
            fprintf(stderr, "kiln %s: --%s: more than %zu values\n", a->cmd->name, name, max);
            return false;
        }
        if (!parse_u64(a->cmd->name, name, tok, UINT32_MAX, &v))
            return false;
        if (v == 0) {
            fprintf(stderr, "kiln %s: --%s: values must be positive\n", a->cmd->name, name);
            return false;
        }
        out[(*n)++] = (uint32_t)v;
    }
    if (*n == 0) {
        fprintf(stderr, "kiln %s: --%s: empty list\n", a->cmd->name, name);
        return false;
    }
    return true;
}
