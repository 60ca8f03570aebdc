/* cli.h - the voxq subcommands. Each returns the process exit code:
 * 0 success, 1 failure of the work, 2 bad usage or input. */
#ifndef VOXQ_WORKER_CLI_H
#define VOXQ_WORKER_CLI_H

typedef struct cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    void (*help)(void);
} cli_command;

int cmd_store(int argc, char **argv);
void cmd_store_help(void);
int cmd_store_pull(int argc, char **argv); /* `voxq store pull` (cmd_store_pull.c) */
void cmd_store_pull_help(void);
int cmd_quantize(int argc, char **argv);
void cmd_quantize_help(void);
int cmd_synth(int argc, char **argv);
void cmd_synth_help(void);
int cmd_worker(int argc, char **argv);
void cmd_worker_help(void);
int cmd_enqueue(int argc, char **argv);
void cmd_enqueue_help(void);
int cmd_wait(int argc, char **argv);
void cmd_wait_help(void);
int cmd_bench(int argc, char **argv);
void cmd_bench_help(void);

/* The value of flag `--name VALUE` or `--name=VALUE` at argv[*i] (advancing *i), else NULL.
 * Sets *missing when the flag is present but has no value. */
const char *cli_flag_value(int argc, char **argv, int *i, const char *name, int *missing);
/* Parses all of s as a decimal integer in [lo, hi] into *out; 0, or -1 when it is not one. */
int cli_parse_long(const char *s, long lo, long hi, long *out);
/* getenv(name) or def when unset or empty. */
const char *cli_env(const char *name, const char *def);

#endif
