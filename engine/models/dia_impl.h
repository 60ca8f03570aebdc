/* dia_impl.h - Dia's internals shared by dia_load.c, dia_model.c and dia_generate.c.
 * Not a public header: users include engine/models/dia.h. */
#ifndef VOXQ_ENGINE_MODELS_DIA_IMPL_H
#define VOXQ_ENGINE_MODELS_DIA_IMPL_H

#include "engine/models/dia.h"
#include "engine/safetensors.h"

typedef struct dia_enc_layer {
    eng_tensor pre_sa_norm;  /* F32 [enc_hidden] */
    eng_tensor post_sa_norm; /* F32 [enc_hidden] */
    eng_weight q, k, v;      /* [heads*hd, hidden], [kv_heads*hd, hidden] x2 */
    eng_weight o;            /* [hidden, heads*hd] */
    eng_weight gate_up;      /* [2*ffn, hidden]: gate rows first, then up */
    eng_weight down;         /* [hidden, ffn] */
} dia_enc_layer;

typedef struct dia_dec_layer {
    eng_tensor pre_sa_norm, pre_ca_norm, pre_mlp_norm; /* F32 [dec_hidden] */
    eng_weight sa_q, sa_k, sa_v, sa_o;                 /* self-attention, GQA */
    eng_weight ca_q, ca_k, ca_v, ca_o; /* cross-attention; ca_k/ca_v read the encoder output */
    eng_weight gate_up, down;
    eng_kv self_kv;  /* slots 2*max_batch, max_len max_frames, dec_kv_heads x dec_head_dim */
    eng_kv cross_kv; /* slots 2*max_batch, max_len max_text, cross_kv_heads x cross_head_dim */
} dia_dec_layer;

/* Backend buffers of the encoder pass (rows = B*S <= 2*max_text). */
typedef struct dia_enc_ws {
    int rows;      /* capacity in rows */
    float *x;      /* (rows, enc_hidden) residual stream */
    float *h;      /* (rows, enc_hidden) normed input; final encoder states */
    float *q;      /* (rows, max(enc_heads*hd, cross_kv_heads*cross_hd)) also cross K */
    float *k;      /* (rows, max(enc_kv_heads*hd, cross_kv_heads*cross_hd)) also cross V */
    float *v;      /* (rows, enc_kv_heads*hd) */
    float *att;    /* (rows, enc_heads*hd) */
    float *gu;     /* (rows, 2*enc_ffn) */
    float *mlp;    /* (rows, enc_ffn) */
    float *tmp;    /* (rows, enc_hidden) */
    int32_t *ids;  /* (rows) I32 byte ids */
    int32_t *pos;  /* (rows) I32 position within the prompt */
    int32_t *slot; /* (rows) I32 batch row of the encoder; cross slot when filling K/V */
    int32_t *len;  /* (rows) I32 keys visible to the row */
    uint8_t *mask; /* (rows) U8 1 = real text byte */
} dia_enc_ws;

/* Backend buffers of one decoder step (rows = 2*max_batch at most, a power of two with graphs).
 * The index tensors and the sampler parameters live in one block (`inputs`) so a step uploads
 * them in one transfer; dia_step_host mirrors the block with the same offsets. */
typedef struct dia_step_ws {
    int rows;
    float *x;      /* (rows, dec_hidden) */
    float *h;      /* (rows, dec_hidden) */
    float *tmp;    /* (rows, dec_hidden) */
    float *q;      /* (rows, max(dec_heads*hd, cross_heads*cross_hd)) */
    float *k, *v;  /* (rows, dec_kv_heads*hd) */
    float *att;    /* (rows, max(dec_heads*hd, cross_heads*cross_hd)) */
    float *gu;     /* (rows, 2*dec_ffn) */
    float *mlp;    /* (rows, dec_ffn) */
    float *logits; /* (rows, channels*dec_vocab) */
    float *scores; /* (rows, channels, dec_vocab) processed scores, one entry per sequence */
    int32_t *picks; /* (rows, channels + 1) picked ids and the channel-0 EOS-argmax flag */
    void *inputs;  /* the block below, inputs_bytes long */
    size_t inputs_bytes;
    int32_t *ids;  /* (rows, channels) I32 input frame */
    int32_t *slot; /* (rows) I32 KV slot (self and cross) */
    int32_t *pos;  /* (rows) I32 decoder position of the frame */
    int32_t *len;  /* (rows) I32 pos + 1 */
    int32_t *xlen; /* (rows) I32 text length of the row's prompt */
    eng_sample_seq *params; /* (rows) sampler parameters, entry i = i-th sequence of the step */
} dia_step_ws;

/* Host mirrors of the step's input block, the downloaded picks, and the staging of the
 * logits that dia_seq_logits() fetches on demand. */
typedef struct dia_step_host {
    void *inputs; /* same layout as dia_step_ws.inputs */
    int32_t *ids, *slot, *pos, *len, *xlen;
    eng_sample_seq *params;
    int32_t *picks; /* (rows, channels + 1) */
    float *logits;  /* (rows, channels*dec_vocab), filled per sequence on demand */
    /* encoder index staging, ews.rows each */
    int32_t *enc_ids, *enc_pos, *enc_slot, *enc_len;
    uint8_t *enc_mask;
} dia_step_host;

struct dia_seq {
    dia_model *m;
    int slot; /* 0..max_batch-1; KV rows 2*slot (cond) and 2*slot+1 (uncond) */
    int in_use;
    dia_gen_params p;
    int cfg; /* 1 when an unconditional row runs */
    int text_len;
    int max_len;     /* frames at most: max_new_tokens + 1 */
    int len;         /* frames so far, BOS frame included */
    int32_t *frames; /* (max_frames, channels) delayed frames, overwrite applied */
    int active;      /* delay-pattern EOS countdown started */
    int delay_left[DIA_MAX_CHANNELS];
    int finished[DIA_MAX_CHANNELS];
    int done;
    int chose_eos;
    int teacher; /* dia_seq_force() pending */
    int32_t force_frame[DIA_MAX_CHANNELS];
    float *scores;   /* (channels, vocab) processed scores of the last step, on demand */
    int row;         /* row of the cond copy in the last step; -1 before the first */
    int entry;       /* sampler entry of the last step */
    unsigned forced; /* channels whose pick the EOS countdown forced in the last step */
    int have_logits; /* host logits of the last step fetched */
    int have_scores; /* scores of the last step fetched */
};

struct dia_model {
    eng_backend *be;
    dia_config cfg;
    dia_load_opts opts;
    st_model *st; /* kept open: CPU weights alias its mapping */

    eng_tensor enc_embed; /* F32/BF16 [enc_vocab, enc_hidden] */
    eng_tensor enc_norm;  /* F32 [enc_hidden] */
    eng_tensor dec_embed; /* F32/BF16 [channels*dec_vocab, dec_hidden] */
    eng_tensor dec_norm;  /* F32 [dec_hidden] */
    eng_weight logits_w;  /* [channels*dec_vocab, dec_hidden] */
    dia_enc_layer *enc;
    dia_dec_layer *dec;

    /* bookkeeping for teardown */
    void **dev_bufs; /* every eng_alloc'd buffer */
    int n_dev, cap_dev;
    eng_weight **weights; /* every weight_load'ed weight */
    int n_w, cap_w;
    void **host_bufs; /* host memory that must live as long as the model */
    int n_host, cap_host;

    dia_enc_ws ews;
    dia_step_ws sws;
    dia_step_host sh;
    dia_seq *seqs;      /* max_batch, preallocated */
    int graphs;         /* the backend can capture steps */
    int graph_uid;      /* graph keys are graph_uid * 32 + log2(row bucket) */
    unsigned graph_off; /* buckets (bit log2) the backend could not keep a graph for */
    dia_mem mem;
};

/* dia_load.c: records a backend buffer / host buffer for freeing at dia_model_free. */
int dia_alloc(dia_model *m, size_t bytes, void **out, size_t *category, eng_error *err);
int dia_keep_host(dia_model *m, void *p, eng_error *err);

/* dia_model.c: the forward passes. */
/* Encoder over B rows of S ids staged in sh.enc_* (host); final states in ews.h. */
int dia_encoder_run(dia_model *m, int B, int S, int masked, eng_error *err);
/* Writes the cross K/V of slot pair `slot` from the states of a B (1 or 2), S=n encoder run. */
int dia_cross_fill(dia_model *m, int slot, int B, int n, eng_error *err);
/* One decoder step over `rows` rows whose inputs (index tensors, sampler entries) are staged in
 * sh (host): logits, then the sampler; the picks of the first `entries` entries land in
 * sh.picks. */
int dia_decoder_step(dia_model *m, int rows, int entries, eng_error *err);

#endif
