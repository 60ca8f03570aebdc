/* test_worker_soak.c - label slow: 2,000 jobs, 3 workers, one of them SIGKILLed at random every
 * 300 ms and replaced. Every job must end succeeded exactly once (one terminal message each on
 * the reply list, one output file each) and no processing list may be left. */
#include <dirent.h>

#include "test.h"
#include "worker/worker_fixture.h"

#define JOBS 2000
#define WORKERS 3

TEST(soak_random_kills) {
    if (wf_reset() != 0) TEST_FAIL_("cannot start redis-server");
    static const char *const env[] = {"VOXQ_MAX_RECOVERIES=50", NULL};
    pid_t w[WORKERS];
    for (int i = 0; i < WORKERS; i++) w[i] = wf_spawn(env, NULL, 0);
    char json[256];
    for (int i = 0; i < JOBS; i++) {
        snprintf(json, sizeof json, "{\"id\":\"s%d\",\"type\":\"synthesize\",\"reply_to\":"
                 "\"soak:replies\",\"output\":\"soak/s%d.wav\",\"text\":\"sleep:5 audio:5\"}",
                 i, i);
        wf_push("voxq:jobs", json);
    }
    unsigned seed = 12345;
    int kills = 0;
    int64_t end = rf_now_ms() + 240000;
    while (rf_int("LLEN soak:replies") < JOBS && rf_now_ms() < end) {
        rf_sleep_ms(300);
        if (kills < 60) {
            int k = (int)(rand_r(&seed) % WORKERS);
            kill(w[k], SIGKILL);
            wf_wait_exit(w[k], 2000);
            w[k] = wf_spawn(env, NULL, 0);
            kills++;
        }
    }
    fprintf(stderr, "  %d kills; %lld replies\n", kills, rf_int("LLEN soak:replies"));
    ASSERT_EQ(rf_int("LLEN soak:replies"), JOBS);
    /* Exactly one terminal message per id. */
    static unsigned char seen[JOBS];
    memset(seen, 0, sizeof seen);
    redisReply *r = rf_cmd("LRANGE soak:replies 0 -1");
    ASSERT_TRUE(r && r->type == REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < r->elements; i++) {
        const char *m = r->element[i]->str;
        const char *p = strstr(m, "\"id\":\"s");
        ASSERT_TRUE(p != NULL);
        ASSERT_CONTAINS(m, "\"state\":\"succeeded\"");
        int id = atoi(p + 7);
        ASSERT_TRUE(id >= 0 && id < JOBS);
        seen[id]++;
    }
    freeReplyObject(r);
    for (int i = 0; i < JOBS; i++) {
        if (seen[i] != 1) fprintf(stderr, "  s%d: %d terminal messages\n", i, seen[i]);
        ASSERT_EQ(seen[i], 1);
    }
    /* One output file each. A writer SIGKILLed mid-write can leave its hidden temp file
     * (".sN.wav.tmp.XXXXXX", removed by the next writer of that output after a minute), never a
     * partial output. */
    char dir[400];
    snprintf(dir, sizeof dir, "%s/soak", wf_out_);
    DIR *d = opendir(dir);
    ASSERT_TRUE(d != NULL);
    int files = 0, others = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || e->d_name[1] == '.')) continue;
        size_t n = strlen(e->d_name);
        if (n > 4 && !strcmp(e->d_name + n - 4, ".wav") && e->d_name[0] == 's') files++;
        else if (strncmp(e->d_name, ".s", 2) != 0 || !strstr(e->d_name, ".wav.tmp.")) others++;
    }
    closedir(d);
    ASSERT_EQ(files, JOBS);
    ASSERT_EQ(others, 0);
    /* Processing lists drain once the killed workers are reaped. */
    int64_t until = rf_now_ms() + 10000;
    while (wf_proc_total() > 0 && rf_now_ms() < until) rf_sleep_ms(100);
    ASSERT_EQ(wf_proc_total(), 0);
    ASSERT_EQ(rf_int("LLEN voxq:jobs"), 0);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
