/* test_dac.c - the DAC decoder against transformers 5.17 outputs of a tiny random DAC.
 *
 * Fixtures (tests/reference/data, see its README.md): dac_tiny/ (plain weights), dac_tiny_wn/
 * (weight_g/weight_v), dac_tiny_param/ (parametrizations.weight.original0/1), and
 * dac_ref.safetensors with dac_codes [1,9,12] I64, dac_latent [1,32,12] and dac_wave (96
 * samples) from DacModel.quantizer.from_codes / DacModel.decode. */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/models/dac.h"
#include "engine/safetensors.h"
#include "test.h"

/* Tolerances: transformers vs this engine, both f32 on the CPU. Latent is 8-term dot products
 * (spec 9.3 measured 8e-7); the waveform goes through ~30 convs (measured 1.1e-5). */
#define LATENT_TOL 1e-5
#define WAVE_TOL 1e-4

static eng_backend *backend(void) {
    static eng_backend *be;
    eng_error err = {0};
    if (!be && eng_backend_cpu_new(&be, 2, &err) != 0) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        exit(1);
    }
    return be;
}

/* The reference codes as I32 [9][12], plus latent and waveform; NULL-free on success. */
typedef struct dac_ref {
    st_file *file;
    int32_t codes[9 * 12];
    int64_t n_frames;
    const float *latent; /* [32][12] */
    const float *wave;   /* [96] */
    int64_t wave_n;
} dac_ref;

static int ref_open(dac_ref *r) {
    eng_error err = {0};
    memset(r, 0, sizeof *r);
    if (st_open(&r->file, VOXQ_FIXTURES "/dac_ref.safetensors", &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    const st_tensor *c = st_find(r->file, "dac_codes");
    const st_tensor *l = st_find(r->file, "dac_latent");
    const st_tensor *w = st_find(r->file, "dac_wave");
    if (!c || !l || !w || c->dtype != ENG_DT_I64 || c->ndim != 3 || c->shape[1] != 9 ||
        c->shape[2] > 12 || l->dtype != ENG_DT_F32 || w->dtype != ENG_DT_F32) {
        fprintf(stderr, "  dac_ref.safetensors: unexpected tensors\n");
        return -1;
    }
    r->n_frames = c->shape[2];
    const int64_t *codes = c->data;
    for (int64_t i = 0; i < 9 * r->n_frames; i++)
        r->codes[i] = (int32_t)codes[i];
    r->latent = l->data;
    r->wave = w->data;
    r->wave_n = (int64_t)(w->nbytes / sizeof(float));
    return 0;
}

/* Decodes the reference codes with the checkpoint in `dir` (chunk_frames as given) and compares
 * latent and waveform with transformers. */
static void check_dir_against_ref(const char *dir, int chunk_frames) {
    dac_ref ref;
    eng_error err = {0};
    dac_model *m = NULL;
    float *pcm = NULL, *latent = NULL;
    ASSERT_OK(ref_open(&ref));
    dac_options opts = {chunk_frames};
    int rc = dac_model_load(&m, backend(), dir, &opts, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    const dac_config *cfg = dac_model_config(m);
    ASSERT_EQ(cfg->hop_length, 8);
    ASSERT_EQ(cfg->hidden_size, 32);
    ASSERT_EQ(cfg->sampling_rate, 44100);
    ASSERT_EQ(dac_samples(m, ref.n_frames), ref.wave_n);

    latent = malloc(sizeof(float) * 32 * (size_t)ref.n_frames);
    ASSERT_OK(dac_latent(m, ref.codes, ref.n_frames, latent, &err));
    ASSERT_CLOSE_F32("latent", latent, ref.latent, 32 * (size_t)ref.n_frames, LATENT_TOL, 0);

    pcm = malloc(sizeof(float) * (size_t)ref.wave_n);
    rc = dac_decode(m, ref.codes, ref.n_frames, pcm, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_CLOSE_F32("waveform", pcm, ref.wave, (size_t)ref.wave_n, WAVE_TOL, 0);
    free(latent);
    free(pcm);
    dac_model_free(m);
    st_close(ref.file);
}

TEST(decode_matches_transformers) {
    check_dir_against_ref(VOXQ_FIXTURES "/dac_tiny", 0);
}

TEST(weight_g_weight_v_folded) {
    check_dir_against_ref(VOXQ_FIXTURES "/dac_tiny_wn", 0);
}

TEST(parametrizations_folded) {
    check_dir_against_ref(VOXQ_FIXTURES "/dac_tiny_param", 0);
}

/* The waveforms of the greedy Dia reference run (dia_ref.safetensors audio_codes_i -> audio_i,
 * processor.batch_decode through dac_tiny). */
TEST(dia_reference_audio) {
    st_file *f = NULL;
    eng_error err = {0};
    dac_model *m = NULL;
    ASSERT_OK(st_open(&f, VOXQ_FIXTURES "/dia_ref.safetensors", &err));
    ASSERT_OK(dac_model_load(&m, backend(), VOXQ_FIXTURES "/dac_tiny", NULL, &err));
    for (int item = 0; item < 2; item++) {
        char name[64];
        snprintf(name, sizeof name, "audio_codes_%d", item);
        const st_tensor *c = st_find(f, name);
        snprintf(name, sizeof name, "audio_%d", item);
        const st_tensor *w = st_find(f, name);
        ASSERT_TRUE(c && w && c->dtype == ENG_DT_I64 && c->ndim == 3 && c->shape[1] == 9);
        int64_t n = c->shape[2];
        ASSERT_EQ(dac_samples(m, n), (int64_t)(w->nbytes / sizeof(float)));
        int32_t *codes = malloc(sizeof(int32_t) * 9 * (size_t)n);
        float *pcm = malloc(sizeof(float) * (size_t)dac_samples(m, n));
        for (int64_t i = 0; i < 9 * n; i++)
            codes[i] = (int32_t)((const int64_t *)c->data)[i];
        ASSERT_OK(dac_decode(m, codes, n, pcm, &err));
        ASSERT_CLOSE_F32(name, pcm, (const float *)w->data, (size_t)dac_samples(m, n), WAVE_TOL, 0);
        free(codes);
        free(pcm);
    }
    dac_model_free(m);
    st_close(f);
}

/* Chunks smaller than the input: 12 frames fit one pass only when the margin allows, so use a
 * long random input to exercise real chunk edges below. Here: the reference through 1-frame
 * chunks still matches (the whole input fits one widened pass). */
TEST(tiny_chunk_option_matches) {
    check_dir_against_ref(VOXQ_FIXTURES "/dac_tiny", 1);
}

/* Deterministic codes in [0, 1024). */
static void random_codes(int32_t *codes, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        codes[i] = (int32_t)((seed >> 33) % 1024);
    }
}

/* A long input decoded in chunks with borrowed margins equals one whole pass, to `tol`. */
static void check_chunked(eng_backend *be, double tol) {
    const int64_t frames = 333;
    eng_error err = {0};
    dac_model *whole = NULL, *chunked = NULL;
    dac_options big = {4096}, small = {16};
    ASSERT_OK(dac_model_load(&whole, be, VOXQ_FIXTURES "/dac_tiny", &big, &err));
    ASSERT_OK(dac_model_load(&chunked, be, VOXQ_FIXTURES "/dac_tiny", &small, &err));
    int margin = dac_model_margin_frames(chunked);
    ASSERT_TRUE(margin > 0 && margin < 64);
    ASSERT_TRUE(frames > 16 + 2 * margin); /* really chunked */
    int32_t *codes = malloc(sizeof(int32_t) * 9 * frames);
    random_codes(codes, 9 * (size_t)frames, 42);
    int64_t n = dac_samples(whole, frames);
    float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
    ASSERT_OK(dac_decode(whole, codes, frames, a, &err));
    ASSERT_OK(dac_decode(chunked, codes, frames, b, &err));
    ASSERT_CLOSE_F32("chunked vs whole", b, a, (size_t)n, tol, 0);
    dac_mem mw, mc;
    dac_model_mem(whole, &mw);
    dac_model_mem(chunked, &mc);
    fprintf(stderr, "  workspace: whole %zu B, chunk 16 + margin %d: %zu B\n", mw.workspace, margin,
            mc.workspace);
    ASSERT_TRUE(mc.workspace < mw.workspace);
    free(codes);
    free(a);
    free(b);
    dac_model_free(whole);
    dac_model_free(chunked);
}

/* With the portable CPU kernels every output sample is the same sum in the same order whatever
 * the window, so chunking is bit-exact: any shortfall of the margin would show here. */
TEST(chunked_equals_whole_exactly_generic_cpu) {
    eng_backend *be = NULL;
    eng_error err = {0};
    setenv("VOXQ_CPU_SIMD", "generic", 1);
    int rc = eng_backend_cpu_new(&be, 2, &err);
    unsetenv("VOXQ_CPU_SIMD");
    ASSERT_OK(rc);
    check_chunked(be, 0.0);
    eng_backend_free(be);
}

/* The AVX2 kernels use FMA inside the signal and the scalar formula at its edges, so which
 * samples are edges (and thus the last bits) depends on the window; the difference stays at
 * rounding level, far below what a missing bit of context would cause. */
TEST(chunked_equals_whole_default_cpu) {
    check_chunked(backend(), WAVE_TOL);
}

TEST(code_out_of_range_is_an_error) {
    eng_error err = {0};
    dac_model *m = NULL;
    ASSERT_OK(dac_model_load(&m, backend(), VOXQ_FIXTURES "/dac_tiny", NULL, &err));
    int32_t codes[9 * 3];
    random_codes(codes, 27, 7);
    codes[4 * 3 + 2] = 1024; /* codebook 4, frame 2 */
    float pcm[24];
    ASSERT_EQ(dac_decode(m, codes, 3, pcm, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "codebook 4");
    ASSERT_CONTAINS(err.msg, "frame 2");
    ASSERT_EQ(dac_decode(m, codes, 0, pcm, &err), 0);
    dac_model_free(m);
}

TEST(dia_checkpoint_is_the_wrong_kind) {
    eng_error err = {0};
    dac_model *m = NULL;
    int rc = dac_model_load(&m, backend(), VOXQ_FIXTURES "/dia_tiny", NULL, &err);
    ASSERT_EQ(rc, ENG_EMISMATCH);
    ASSERT_TRUE(m == NULL);
    fprintf(stderr, "  message: %s\n", err.msg);
    ASSERT_CONTAINS(err.msg, "not a DAC");
}

/* ---- checkpoints made in a temporary directory ---- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static char *make_tmpdir(void) {
    char tmpl[] = "/tmp/voxq-test-dac-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static void remove_tree(char *dir) {
    if (dir) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static int write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static int copy_file(const char *src, const char *dir, const char *name) {
    char path[4096], buf[65536];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *in = fopen(src, "rb"), *out = fopen(path, "wb");
    int rc = in && out ? 0 : -1;
    size_t n;
    while (!rc && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    if (in) fclose(in);
    if (out && fclose(out)) rc = -1;
    return rc;
}

#define TINY_CONFIG_FMT                                                                            \
    "{\"model_type\": \"%s\", \"encoder_hidden_size\": 8, \"downsampling_ratios\": [%s],"          \
    " \"decoder_hidden_size\": %d, \"n_codebooks\": 9, \"codebook_size\": 1024,"                   \
    " \"codebook_dim\": 8, \"sampling_rate\": 44100}"

static int write_config(const char *dir, const char *type, const char *ratios, int dec_hidden) {
    char text[512];
    snprintf(text, sizeof text, TINY_CONFIG_FMT, type, ratios, dec_hidden);
    return write_text(dir, "config.json", text);
}

/* A DAC config beside a safetensors file holding only an encoder tensor. */
TEST(file_without_quantizer_is_the_wrong_kind) {
    char *dir = make_tmpdir();
    eng_error err = {0};
    ASSERT_TRUE(dir != NULL);
    ASSERT_OK(write_config(dir, "dac", "2, 4", 32));
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_writer *w = NULL;
    ASSERT_OK(st_writer_open(&w, path, &err));
    int64_t shape[3] = {8, 1, 7};
    float zeros[56] = {0};
    ASSERT_OK(st_writer_declare(w, "encoder.conv1.weight", ENG_DT_F32, 3, shape));
    ASSERT_OK(st_writer_begin_data(w));
    ASSERT_OK(st_writer_write(w, zeros, sizeof zeros));
    ASSERT_OK(st_writer_finish(w));
    dac_model *m = NULL;
    ASSERT_EQ(dac_model_load(&m, backend(), dir, NULL, &err), ENG_EMISMATCH);
    ASSERT_CONTAINS(err.msg, "not a DAC codec checkpoint");
    ASSERT_CONTAINS(err.msg, "quantizer.quantizers.0.codebook.weight");
    remove_tree(dir);
}

/* A DAC config.json beside Dia's weights (a mixed-up copy): the tensors say what they are. */
TEST(dia_tensors_under_a_dac_config_are_the_wrong_kind) {
    char *dir = make_tmpdir();
    eng_error err = {0};
    ASSERT_TRUE(dir != NULL);
    ASSERT_OK(write_config(dir, "dac", "2, 4", 32));
    ASSERT_OK(copy_file(VOXQ_FIXTURES "/dia_tiny/model.safetensors", dir, "model.safetensors"));
    dac_model *m = NULL;
    ASSERT_EQ(dac_model_load(&m, backend(), dir, NULL, &err), ENG_EMISMATCH);
    fprintf(stderr, "  message: %s\n", err.msg);
    ASSERT_CONTAINS(err.msg, "Dia text-to-speech checkpoint, not a DAC codec");
    remove_tree(dir);
}

/* config.json says 64 decoder channels; the tensors have 32: the error names tensor and
 * both shapes. */
TEST(shape_disagreeing_with_config_names_the_tensor) {
    char *dir = make_tmpdir();
    eng_error err = {0};
    ASSERT_TRUE(dir != NULL);
    ASSERT_OK(write_config(dir, "dac", "2, 4", 64));
    ASSERT_OK(copy_file(VOXQ_FIXTURES "/dac_tiny/model.safetensors", dir, "model.safetensors"));
    dac_model *m = NULL;
    ASSERT_EQ(dac_model_load(&m, backend(), dir, NULL, &err), ENG_EMISMATCH);
    fprintf(stderr, "  message: %s\n", err.msg);
    ASSERT_CONTAINS(err.msg, "decoder.conv1.weight");
    ASSERT_CONTAINS(err.msg, "[64,32,7]");
    ASSERT_CONTAINS(err.msg, "[32,32,7]");
    remove_tree(dir);
}

TEST(config_checks) {
    char *dir = make_tmpdir();
    char path[4096];
    eng_error err = {0};
    dac_config cfg;
    ASSERT_TRUE(dir != NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);

    ASSERT_OK(dac_config_read(&cfg, VOXQ_FIXTURES "/dac_tiny/config.json", &err));
    ASSERT_EQ(cfg.n_blocks, 2);
    ASSERT_EQ(cfg.upsampling_ratios[0], 4);
    ASSERT_EQ(cfg.upsampling_ratios[1], 2);
    ASSERT_EQ(cfg.hop_length, 8);
    ASSERT_EQ(cfg.n_codebooks, 9);

    /* The 44.1 kHz codec's published sizes (spec 2.2). */
    ASSERT_OK(write_text(dir, "config.json",
                         "{\"model_type\": \"dac\", \"encoder_hidden_size\": 64,"
                         " \"downsampling_ratios\": [2, 4, 8, 8], \"decoder_hidden_size\": 1536,"
                         " \"n_codebooks\": 9, \"codebook_size\": 1024, \"codebook_dim\": 8,"
                         " \"sampling_rate\": 44100, \"hop_length\": 512}"));
    ASSERT_OK(dac_config_read(&cfg, path, &err));
    ASSERT_EQ(cfg.hidden_size, 1024);
    ASSERT_EQ(cfg.hop_length, 512);
    ASSERT_EQ(cfg.upsampling_ratios[0], 8);
    ASSERT_EQ(cfg.upsampling_ratios[3], 2);

    ASSERT_OK(write_config(dir, "dia", "2, 4", 32));
    ASSERT_EQ(dac_config_read(&cfg, path, &err), ENG_EMISMATCH);
    ASSERT_CONTAINS(err.msg, "model_type 'dia'");

    ASSERT_OK(write_config(dir, "dac", "3, 4", 32));
    ASSERT_EQ(dac_config_read(&cfg, path, &err), ENG_EUNSUPPORTED);
    ASSERT_CONTAINS(err.msg, "odd");

    ASSERT_OK(write_text(dir, "config.json",
                         "{\"model_type\": \"dac\", \"encoder_hidden_size\""
                         ": 8, \"downsampling_ratios\": [2]}"));
    ASSERT_EQ(dac_config_read(&cfg, path, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "decoder_hidden_size");

    ASSERT_OK(write_text(dir, "config.json", "{\"model_type\": \"dac\", "));
    ASSERT_EQ(dac_config_read(&cfg, path, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "invalid JSON");
    remove_tree(dir);
}

int main(int argc, char **argv) {
    int rc = test_main(argc, argv);
    eng_backend_free(backend());
    return rc;
}
