// The fields of an OCI runtime spec (a bundle's config.json) that more than one
// reader uses; each reader names any others it needs. The rest goes to runc (or
// the DPU agent) as written.
import type { OciMount } from './mounts';

export interface OciSpec {
  annotations?: Record<string, string>;
  mounts?: OciMount[];
}
