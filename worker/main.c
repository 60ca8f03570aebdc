/* main.c - `voxq SUBCOMMAND ...`: dispatch to the subcommands of cli.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/cli.h"

/* Subcommands in the order `voxq --help` lists them. */
static const cli_command commands[] = {
    {"store", "list, verify, import, pull and remove stored models", cmd_store, cmd_store_help},
    {"quantize", "make an int8 or int4 variant of a stored model, once", cmd_quantize, cmd_quantize_help},
    {"synth", "synthesize one text to an audio file on this machine", cmd_synth, cmd_synth_help},
    {"worker", "run the job service: Redis queue, engine, results", cmd_worker, cmd_worker_help},
    {"enqueue", "push a synthesize or quantize job and print its id", cmd_enqueue, cmd_enqueue_help},
    {"wait", "wait for a job to finish and print its result", cmd_wait, cmd_wait_help},
    {"bench", "compare variants: speed, memory, quality, HTML report", cmd_bench, cmd_bench_help},
};
static const size_t ncommands = sizeof commands / sizeof commands[0];

const char *cli_flag_value(int argc, char **argv, int *i, const char *name, int *missing) {
    const char *arg = argv[*i];
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0) return NULL;
    if (arg[n] == '=') return arg + n + 1;
    if (arg[n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        if (missing) *missing = 1;
        return NULL;
    }
    (*i)++;
    return argv[*i];
}

int cli_parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

const char *cli_env(const char *name, const char *def) {
    const char *v = getenv(name);
    return (v && *v) ? v : def;
}

static void usage(FILE *out) {
    fprintf(out, "voxq %s - text-to-speech job service\n\n"
                 "usage: voxq COMMAND [ARGS]...\n       voxq help COMMAND\n\ncommands:\n",
            VOXQ_VERSION);
    for (size_t i = 0; i < ncommands; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nExit codes: 0 success, 1 failure of the work, 2 bad usage or input.\n");
}

static const cli_command *find_command(const char *name) {
    for (size_t i = 0; i < ncommands; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        if (!strcmp(name, "help") && argc > 2) {
            const cli_command *c = find_command(argv[2]);
            if (!c) {
                fprintf(stderr, "voxq: unknown command '%s'\n", argv[2]);
                return 2;
            }
            c->help();
            return 0;
        }
        usage(stdout);
        return 0;
    }
    if (!strcmp(name, "--version")) {
        printf("voxq %s\n", VOXQ_VERSION);
        return 0;
    }
    const cli_command *c = find_command(name);
    if (!c) {
        fprintf(stderr, "voxq: unknown command '%s' (see voxq --help)\n", name);
        return 2;
    }
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            c->help();
            return 0;
        }
    return c->run(argc - 1, argv + 1);
}
