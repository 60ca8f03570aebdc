/* audio.h - writing synthesized audio to disk (libsndfile), atomically.
 *
 * audio_write() encodes mono float PCM as WAV (16-bit PCM), FLAC (16-bit) or Ogg Vorbis into a
 * temporary file in the destination's directory, fsyncs it, renames it over the destination and
 * fsyncs the directory: a reader sees the whole file or nothing, never a partial one. No global
 * state: it may run on any thread (the worker calls it from the libuv threadpool). */
#ifndef VOXQ_WORKER_AUDIO_H
#define VOXQ_WORKER_AUDIO_H

#include <stddef.h>
#include <stdint.h>

typedef enum audio_format {
    AUDIO_FORMAT_INVALID = 0,
    AUDIO_FORMAT_WAV,
    AUDIO_FORMAT_FLAC,
    AUDIO_FORMAT_OGG,
} audio_format;

/* "wav", "flac" or "ogg" (case-insensitive); AUDIO_FORMAT_INVALID otherwise. */
audio_format audio_format_parse(const char *name);
/* The format a path's extension names (.wav, .flac, .ogg/.oga), or AUDIO_FORMAT_INVALID. */
audio_format audio_format_from_path(const char *path);
/* "wav", "flac", "ogg"; "invalid" otherwise. */
const char *audio_format_name(audio_format fmt);

/* Writes pcm[n] (mono, float, nominally in [-1, 1]; values outside are clipped) at sample_rate
 * to path in format fmt. Returns 0, or a negative errno-style code (-EINVAL bad argument, -EIO
 * and others for I/O) with a message naming the path in errbuf. On failure the destination is
 * untouched and no temporary file is left behind. */
int audio_write(const char *path, const float *pcm, int64_t n, int sample_rate, audio_format fmt,
                char *errbuf, size_t errlen);

#endif
