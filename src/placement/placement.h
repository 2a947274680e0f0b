/*
 * Where a pod's containers run, decided at each task's Create: the pod's offload
 * annotations (heteropod.io/offload, heteropod.io/offload-policy,
 * heteropod.io/ports) and, for each container named for offload, whether the DPU
 * can take it. The C port of src/placement/annotations.ts, placement.ts and the
 * annotation parser of src/netns/ports.ts, for the node daemon in C: the same
 * decisions, and the same error texts, which users see in crictl and in the
 * pod's record.
 *
 * Inputs are the OCI spec (config.json) as jansson parsed it. A field of the
 * wrong JSON type is read as the TS reads it: where the TS tests the type or
 * compares the value (a memory limit that is not a number, a namespace type
 * that is not "pid"), the field counts as absent or different; where the TS
 * would throw a TypeError (a "mounts" that is an object, a null mount), the
 * call fails with -EINVAL and a message naming the field. containerd never
 * writes such specs; runc would refuse them.
 *
 * Functions return 0 or a negative errno, never set errno for the caller, and
 * fill `err` (err_len bytes, cut on a UTF-8 character boundary when too short,
 * so the text stays valid in a protobuf string) with what went wrong:
 *   -EINVAL  a malformed annotation: the message of the TS AnnotationError,
 *            `annotation NAME="value": why` (or a malformed spec, as above);
 *   -EPERM   a container that must run on the DPU (policy require) cannot:
 *            the message of the TS PlacementError;
 *   -ENOMEM  out of memory.
 * HP_ERR_MAX holds every message but one naming an unusually long list
 * (of offloaded containers, or of writable volumes).
 */
#ifndef HETEROPOD_PLACEMENT_H
#define HETEROPOD_PLACEMENT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define HP_ANNOTATION_OFFLOAD "heteropod.io/offload"
#define HP_ANNOTATION_OFFLOAD_POLICY "heteropod.io/offload-policy"
#define HP_ANNOTATION_PORTS "heteropod.io/ports"

#define HP_ERR_MAX 4096

/* How many characters of a value an error quotes, and room for any quote. */
#define HP_QUOTE_CHARS 64
#define HP_QUOTED_SIZE 448

/*
 * A value as an error shows it: JSON.stringify's quoting, the value cut to
 * HP_QUOTE_CHARS characters with `... (N characters)` after it when longer.
 * Characters are Unicode code points here (the TS counts UTF-16 units: the two
 * differ only for characters beyond U+FFFF). `out` is HP_QUOTED_SIZE bytes.
 */
void hp_quote(const char *value, char out[HP_QUOTED_SIZE]);

/* A Kubernetes container name: a DNS-1123 label of at most 63 characters. */
int hp_is_container_name(const char *name);

/* Whether the pod says anything about offload: the key heteropod.io/offload is
 * in `annotations` (an object; NULL or another type has no keys), any value. */
int hp_mentions_offload(json_t *annotations);

struct hp_offload {
	char **containers; /* owned; the names, in the annotation's order */
	size_t n;
	int require; /* heteropod.io/offload-policy=require; else prefer */
};

/*
 * Reads heteropod.io/offload (a comma-separated list of container names; empty,
 * null or absent: none) and heteropod.io/offload-policy ("prefer" when absent)
 * from the spec's "annotations". Values are read exactly as written: whitespace
 * anywhere is refused. On failure *out is empty (freeing it is harmless).
 */
int hp_parse_offload(json_t *annotations, struct hp_offload *out, char *err, size_t err_len);
void hp_offload_free(struct hp_offload *o);
/* Whether `name` is one of the containers to offload (o NULL: none are). */
int hp_offload_names(const struct hp_offload *o, const char *name);

/*
 * The string value of annotations[key]: 0 with *value NULL when absent (or
 * annotations is no object), 0 with the value, or -EINVAL when it is not a
 * string (or holds a NUL character, which jansson refuses unless
 * JSON_ALLOW_NUL). For hp_parse_ports' value.
 */
int hp_annotation(json_t *annotations, const char *key, const char **value, char *err, size_t err_len);

/*
 * Parses heteropod.io/ports, `container=port,port;container=port` (NULL or
 * empty: none), and gives every declared port, sorted and unique (the TS
 * declaredPortList of parsePortsAnnotation): *ports malloc'd (NULL when *n is
 * 0), the caller's to free. When `offloaded` is not NULL every container named
 * must be one it names. On failure *ports is NULL and *n 0.
 */
int hp_parse_ports(const char *value, const struct hp_offload *offloaded, uint16_t **ports, size_t *n, char *err,
		   size_t err_len);

/* What the node daemon knows of the pod's DPU when a container is created. */
struct hp_dpu_state {
	const char *unavailable; /* NULL or "" when the DPU can take containers; else why not */
	uint64_t memory_free_bytes;
};

struct hp_placement {
	int dpu; /* 1: the DPU; 0: the host */
	char *reason; /* owned: why a container named for offload runs on the host; NULL otherwise */
};

/*
 * Where container `name` (spec: its OCI spec; NULL or not an object: no fields)
 * runs. A container not named in `pod` runs on the host. A named one runs on
 * the DPU unless the DPU is unavailable, the pod shares its process namespace,
 * a writable directory is bind-mounted into it, or its memory limit exceeds the
 * DPU's free memory: then, under prefer, on the host with the reason in
 * out->reason; under require the call fails with -EPERM. is_directory(source)
 * says whether a mount's source is a directory; NULL: stat(2) does. *out is
 * always initialised (freeing it is harmless) and holds a result only on 0.
 */
int hp_place_container(const struct hp_offload *pod, const char *name, json_t *spec, const struct hp_dpu_state *dpu,
		       int (*is_directory)(const char *path), struct hp_placement *out, char *err, size_t err_len);
void hp_placement_free(struct hp_placement *p);

#endif
