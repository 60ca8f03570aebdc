/* cmd_store.c - `voxq store ls|verify|import|rm`: the operator's view of the artifact store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/bench.h"
#include "ops/store.h"
#include "worker/cli.h"

void cmd_store_help(void) {
    printf("usage: voxq store ls [MODEL] [--hash]\n"
           "       voxq store verify MODEL/VARIANT [--no-hash]\n"
           "       voxq store import DIR --model NAME [--force]\n"
           "       voxq store rm MODEL/VARIANT\n"
           "\n"
           "  ls      every variant: model, variant, size, created, method and whether it\n"
           "          verifies (sizes; with --hash also every sha256)\n"
           "  verify  checks MANIFEST.json, every file's size and sha256 (--no-hash: sizes only)\n"
           "          and names each file that is wrong; exit 1 when anything is\n"
           "  import  copies a Hugging Face-format download (config.json, model.safetensors or\n"
           "          model.safetensors.index.json + shards, generation_config.json) into\n"
           "          models/NAME/original/ with a manifest; --force replaces an existing one\n"
           "  rm      removes a variant (waits for a writer of it to finish)\n"
           "\n"
           "options:\n"
           "  --store DIR   store root (env VOXQ_STORE, default ./store)\n"
           "\n"
           "Names are [a-z0-9._-]. Exit codes: 0 success, 1 failure (damaged, missing),\n"
           "2 bad usage or input.\n");
    cmd_store_pull_help();
}

/* Human-readable byte count with three significant figures ("1.27 GB"). */
static const char *human_bytes(uint64_t n, char buf[32]) {
    static const char *const units[] = {"B", "KB", "MB", "GB", "TB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    if (u == 0)
        snprintf(buf, 32, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, 32, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, units[u]);
    return buf;
}

/* Progress display: a redrawn bar on a terminal, a few plain lines otherwise (logs, CI). */
typedef struct progress {
    const char *verb; /* "copying", "hashing" */
    int tty;
    int last_percent; /* last printed percentage of the current file, plain mode */
    char file[256];
} progress;

static void show_progress(void *ud, const char *file, uint64_t done, uint64_t total) {
    progress *p = ud;
    char a[32], b[32];
    if (strcmp(p->file, file) != 0) {
        snprintf(p->file, sizeof p->file, "%s", file);
        p->last_percent = -1;
    }
    int percent = total ? (int)(done * 100 / total) : 100;
    if (p->tty) {
        enum { WIDTH = 30 };
        char bar[WIDTH + 1];
        int filled = percent * WIDTH / 100;
        for (int i = 0; i < WIDTH; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[WIDTH] = '\0';
        fprintf(stderr, "\r  %s %-36.36s [%s] %3d%%  %s / %s\033[K", p->verb, file, bar, percent,
                human_bytes(done, a), human_bytes(total, b));
        if (done >= total) fputc('\n', stderr);
    } else if (done >= total || percent / 25 > p->last_percent / 25) {
        fprintf(stderr, "%s %s: %d%% (%s of %s)\n", p->verb, file, percent, human_bytes(done, a),
                human_bytes(total, b));
    }
    p->last_percent = percent;
    fflush(stderr);
}

/* Exit code for a store result: bad names and arguments are the caller's input. */
static int exit_code(int rc) {
    if (rc == 0) return 0;
    return rc == ENG_EINVAL ? 2 : 1;
}

static int open_store(store *s, const char *root) {
    eng_error err = {0};
    int rc = store_open(s, root, &err);
    if (rc) fprintf(stderr, "voxq store: %s\n", err.msg);
    return rc;
}

static int store_ls(store *s, const char *model, int hash) {
    store_entry *list;
    size_t n;
    eng_error err = {0};
    int rc = store_list(s, model, &list, &n, &err);
    if (rc) {
        fprintf(stderr, "voxq store ls: %s\n", err.msg);
        return exit_code(rc);
    }
    printf("%-20s %-12s %10s  %-20s  %-8s  %s\n", "MODEL", "VARIANT", "SIZE", "CREATED", "METHOD",
           "VERIFIED");
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const store_entry *e = &list[i];
        char size[32], verified[200];
        if (e->state != STORE_VALID) {
            snprintf(verified, sizeof verified, "NO: %s", e->problem);
        } else if (hash) {
            eng_error verr = {0};
            int v =
                store_verify(s, e->model, e->variant, STORE_VERIFY_HASHES, NULL, NULL, NULL, &verr);
            const char *why = strstr(verr.msg, ": ") ? strstr(verr.msg, ": ") + 2 : verr.msg;
            if (v)
                snprintf(verified, sizeof verified, "NO: %.190s", why);
            else
                snprintf(verified, sizeof verified, "yes (sha256)");
        } else {
            snprintf(verified, sizeof verified, "yes (sizes)");
        }
        bad += strncmp(verified, "NO", 2) == 0;
        printf("%-20s %-12s %10s  %-20s  %-8s  %s\n", e->model, e->variant,
               human_bytes(e->bytes, size), e->created[0] ? e->created : "-",
               e->method[0] ? e->method : "-", verified);
        store_manifest man = {0}; /* quality figures recorded by voxq quantize (ops/bench.h) */
        char line[256];
        if (e->state == STORE_VALID && !store_manifest_read(s, e->model, e->variant, &man, NULL) &&
            bench_quality_summary(man.json, line, sizeof line))
            printf("%-20s quality: %s\n", "", line);
        store_manifest_free(&man);
    }
    if (n == 0) fprintf(stderr, "(no models in %s)\n", s->root);
    free(list);
    return bad ? 1 : 0;
}

static int store_verify_cmd(store *s, const char *ref, int hash) {
    char model[STORE_NAME_MAX], variant[STORE_NAME_MAX];
    eng_error err = {0};
    int rc = store_split_ref(ref, model, variant, &err);
    if (rc) {
        fprintf(stderr, "voxq store verify: %s\n", err.msg);
        return 2;
    }
    progress p = {.verb = "hashing", .tty = isatty(2), .last_percent = -1};
    store_report report;
    rc = store_verify(s, model, variant, hash ? STORE_VERIFY_HASHES : 0, show_progress, &p, &report,
                      &err);
    if (rc == 0) {
        store_manifest m;
        if (store_manifest_read(s, model, variant, &m, &err) == 0) {
            char size[32];
            printf("%s/%s: OK (%zu files, %s, %s checked, digest %s)\n", model, variant, m.nfiles,
                   human_bytes(m.total_bytes, size), hash ? "sizes and sha256" : "sizes", m.digest);
            store_manifest_free(&m);
        }
    } else if (rc == STORE_ECORRUPT) {
        printf("%s/%s: DAMAGED (%zu problem%s)\n", model, variant, report.nproblems,
               report.nproblems == 1 ? "" : "s");
        for (size_t i = 0; i < report.nproblems; i++)
            printf("  %s\n", report.problems[i]);
    } else {
        fprintf(stderr, "voxq store verify: %s\n", err.msg);
    }
    store_report_free(&report);
    return exit_code(rc);
}

static int store_import_cmd(store *s, const char *dir, const char *model, int force) {
    progress p = {.verb = "copying", .tty = isatty(2), .last_percent = -1};
    eng_error err = {0};
    fprintf(stderr, "importing %s as %s/original into %s\n", dir, model, s->root);
    int rc = store_import(s, dir, model, force ? STORE_FORCE : 0, show_progress, &p, &err);
    if (rc == STORE_EEXIST) {
        printf("%s (use --force to replace it)\n", err.msg);
        return 0;
    }
    if (rc == STORE_ECORRUPT) {
        fprintf(stderr, "voxq store import: %s (use --force to replace it)\n", err.msg);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "voxq store import: %s\n", err.msg);
        return rc == ENG_EINVAL || rc == ENG_ENOTFOUND || rc == ENG_EFORMAT ? 2 : 1;
    }
    store_manifest m;
    if (store_manifest_read(s, model, "original", &m, &err) == 0) {
        char size[32];
        printf("%s/original: imported %zu files, %s, digest %s\n", model, m.nfiles,
               human_bytes(m.total_bytes, size), m.digest);
        store_manifest_free(&m);
    }
    return 0;
}

static int store_rm_cmd(store *s, const char *ref) {
    char model[STORE_NAME_MAX], variant[STORE_NAME_MAX];
    eng_error err = {0};
    int rc = store_split_ref(ref, model, variant, &err);
    if (!rc) rc = store_remove(s, model, variant, 0, &err);
    if (rc) {
        fprintf(stderr, "voxq store rm: %s\n", err.msg);
        return exit_code(rc);
    }
    printf("removed %s/%s\n", model, variant);
    return 0;
}

int cmd_store(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "pull")) return cmd_store_pull(argc - 1, argv + 1);
    const char *root = store_default_root(), *model = NULL;
    const char *positional[2] = {NULL, NULL};
    int npositional = 0, hash = 0, no_hash = 0, force = 0;
    if (argc < 2) {
        cmd_store_help();
        return 2;
    }
    const char *sub = argv[1];
    for (int i = 2; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_flag_value(argc, argv, &i, "--store", &missing)))
            root = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--model", &missing)))
            model = v;
        else if (missing) {
            fprintf(stderr, "voxq store: %s needs a value\n", argv[i]);
            return 2;
        } else if (!strcmp(argv[i], "--hash"))
            hash = 1;
        else if (!strcmp(argv[i], "--no-hash"))
            no_hash = 1;
        else if (!strcmp(argv[i], "--force"))
            force = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "voxq store: unknown option '%s'\n", argv[i]);
            return 2;
        } else if (npositional < 2)
            positional[npositional++] = argv[i];
        else {
            fprintf(stderr, "voxq store: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    int is_ls = !strcmp(sub, "ls"), is_verify = !strcmp(sub, "verify");
    int is_import = !strcmp(sub, "import"), is_rm = !strcmp(sub, "rm");
    if (!is_ls && !is_verify && !is_import && !is_rm) {
        fprintf(stderr, "voxq store: unknown subcommand '%s' (ls, verify, import, rm, pull)\n",
                sub);
        return 2;
    }
    /* ls takes an optional MODEL, the others exactly one operand. */
    int operands_ok = is_ls ? npositional <= 1 : npositional == 1;
    if (!operands_ok || (is_import && !model) || (!is_import && model) || (hash && !is_ls) ||
        (no_hash && !is_verify) || (force && !is_import)) {
        fprintf(stderr, "voxq store %s: bad arguments (see voxq help store)\n", sub);
        return 2;
    }
    if (is_ls && positional[0] && !store_name_valid(positional[0])) {
        fprintf(stderr, "voxq store ls: invalid model name '%s'\n", positional[0]);
        return 2;
    }
    store s;
    if (open_store(&s, root) != 0) return 1;
    int code;
    if (is_ls)
        code = store_ls(&s, positional[0], hash);
    else if (is_verify)
        code = store_verify_cmd(&s, positional[0], !no_hash);
    else if (is_import)
        code = store_import_cmd(&s, positional[0], model, force);
    else
        code = store_rm_cmd(&s, positional[0]);
    store_close(&s);
    return code;
}
