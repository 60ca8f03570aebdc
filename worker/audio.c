/* audio.c - float PCM to wav/flac/ogg through libsndfile, via temp file + fsync + rename. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sndfile.h>

#include "worker/audio.h"

/* Frames handed to libsndfile per call: bounded so progress is steady on huge outputs. */
#define AUDIO_WRITE_BLOCK 65536

audio_format audio_format_parse(const char *name) {
    if (!name) return AUDIO_FORMAT_INVALID;
    if (!strcasecmp(name, "wav")) return AUDIO_FORMAT_WAV;
    if (!strcasecmp(name, "flac")) return AUDIO_FORMAT_FLAC;
    if (!strcasecmp(name, "ogg")) return AUDIO_FORMAT_OGG;
    return AUDIO_FORMAT_INVALID;
}

audio_format audio_format_from_path(const char *path) {
    const char *dot = path ? strrchr(path, '.') : NULL;
    if (!dot || strchr(dot, '/')) return AUDIO_FORMAT_INVALID;
    if (!strcasecmp(dot, ".oga")) return AUDIO_FORMAT_OGG;
    return audio_format_parse(dot + 1);
}

const char *audio_format_name(audio_format fmt) {
    switch (fmt) {
    case AUDIO_FORMAT_WAV:
        return "wav";
    case AUDIO_FORMAT_FLAC:
        return "flac";
    case AUDIO_FORMAT_OGG:
        return "ogg";
    default:
        return "invalid";
    }
}

/* Formats a message into errbuf (may be NULL) and returns code. */
static int fail(char *errbuf, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *errbuf, size_t errlen, int code, const char *fmt, ...) {
    if (errbuf && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errbuf, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* libsndfile's major/subtype for our formats: 16-bit PCM where the container has PCM. */
static int sf_format_of(audio_format fmt) {
    switch (fmt) {
    case AUDIO_FORMAT_WAV:
        return SF_FORMAT_WAV | SF_FORMAT_PCM_16;
    case AUDIO_FORMAT_FLAC:
        return SF_FORMAT_FLAC | SF_FORMAT_PCM_16;
    case AUDIO_FORMAT_OGG:
        return SF_FORMAT_OGG | SF_FORMAT_VORBIS;
    default:
        return 0;
    }
}

/* fsyncs the directory holding path so the rename itself is durable. */
static int sync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return -ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    free(copy);
    if (fd < 0) return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* The code for a failed libsndfile call: libsndfile reports a failed write(2) only as text, so
 * the errno it left is kept when it is a storage condition the caller must name (a full or
 * read-only volume, a quota); anything else is EIO. errno must be cleared before the call. */
static int sf_failure_code(void) {
    int e = errno;
    return e == ENOSPC || e == EROFS || e == EDQUOT || e == EFBIG ? -e : -EIO;
}

/* Encodes pcm into the open descriptor fd (positioned at 0). */
static int encode_to_fd(int fd, const char *path, const float *pcm, int64_t n, int sample_rate,
                        audio_format fmt, char *errbuf, size_t errlen) {
    SF_INFO info;
    memset(&info, 0, sizeof info);
    info.samplerate = sample_rate;
    info.channels = 1;
    info.format = sf_format_of(fmt);
    if (!sf_format_check(&info))
        return fail(errbuf, errlen, -EINVAL, "%s: libsndfile cannot write %s at %d Hz", path,
                    audio_format_name(fmt), sample_rate);
    errno = 0;
    SNDFILE *snd = sf_open_fd(fd, SFM_WRITE, &info, 0);
    if (!snd) return fail(errbuf, errlen, sf_failure_code(), "%s: %s", path, sf_strerror(NULL));
    /* Out-of-range floats saturate instead of wrapping around in integer formats. */
    sf_command(snd, SFC_SET_CLIPPING, NULL, SF_TRUE);
    int rc = 0;
    for (int64_t done = 0; done < n;) {
        sf_count_t chunk =
            n - done < AUDIO_WRITE_BLOCK ? (sf_count_t)(n - done) : AUDIO_WRITE_BLOCK;
        errno = 0;
        sf_count_t wrote = sf_writef_float(snd, pcm + done, chunk);
        if (wrote != chunk) {
            rc = fail(errbuf, errlen, sf_failure_code(),
                      "%s: write failed after %lld samples: %s", path,
                      (long long)(done + (wrote > 0 ? wrote : 0)), sf_strerror(snd));
            break;
        }
        done += chunk;
    }
    errno = 0;
    if (sf_close(snd) != 0 && rc == 0)
        rc = fail(errbuf, errlen, sf_failure_code(), "%s: closing the encoder failed", path);
    return rc;
}

int audio_write(const char *path, const float *pcm, int64_t n, int sample_rate, audio_format fmt,
                char *errbuf, size_t errlen) {
    if (!path || !*path) return fail(errbuf, errlen, -EINVAL, "audio: empty output path");
    if (n < 0 || (n > 0 && !pcm))
        return fail(errbuf, errlen, -EINVAL, "%s: no samples to write", path);
    if (sample_rate <= 0)
        return fail(errbuf, errlen, -EINVAL, "%s: bad sample rate %d", path, sample_rate);
    if (!sf_format_of(fmt)) return fail(errbuf, errlen, -EINVAL, "%s: unknown audio format", path);

    /* The temp file sits beside the destination: same filesystem, so rename() is atomic. */
    size_t len = strlen(path);
    char *tmp = malloc(len + 32);
    if (!tmp) return fail(errbuf, errlen, -ENOMEM, "%s: out of memory", path);
    char *copy = strdup(path);
    if (!copy) {
        free(tmp);
        return fail(errbuf, errlen, -ENOMEM, "%s: out of memory", path);
    }
    char *slash = strrchr(copy, '/');
    if (slash)
        snprintf(tmp, len + 32, "%.*s/.%s.tmp.XXXXXX", (int)(slash - copy), copy, slash + 1);
    else
        snprintf(tmp, len + 32, ".%s.tmp.XXXXXX", copy);
    free(copy);

    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return fail(errbuf, errlen, -e, "%s: cannot create a temporary file: %s", path,
                    strerror(e));
    }
    int rc = 0;
    /* mkstemp makes 0600; audio for others to read gets the usual 0644. */
    if (fchmod(fd, 0644) != 0) {
        rc = fail(errbuf, errlen, -errno, "%s: chmod: %s", tmp, strerror(errno));
        goto out;
    }
    rc = encode_to_fd(fd, path, pcm, n, sample_rate, fmt, errbuf, errlen);
    if (rc) goto out;
    if (fsync(fd) != 0) {
        rc = fail(errbuf, errlen, -errno, "%s: fsync: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = fail(errbuf, errlen, -errno, "%s: close: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = fail(errbuf, errlen, -errno, "%s: rename: %s", path, strerror(errno));
        goto out;
    }
    if ((rc = sync_parent_dir(path)) != 0)
        fail(errbuf, errlen, rc, "%s: fsync of its directory: %s", path, strerror(-rc));
    free(tmp);
    return rc;
out:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    return rc;
}
