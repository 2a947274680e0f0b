// The split network namespace: what the shim (host half) and the DPU agent
// (DPU half) call. See README "The split network namespace".
export { isIPv4Cidr, networkOf, removeUplink } from './uplink';
export { OWN_NETNS, hasOwnDevice, inNetns } from './exec';
export { openHostHalf, openDpuHalf, podAddress, podIpv4, podWindowPath, NetnsHalf } from './half';
export type { HalfOptions, HostHalfOptions, DpuHalfOptions, HalfStatus, LogLevel } from './half';
export { cleanupPod } from './cleanup';
export { CLEANUP_HOOK, cleanupHook, withCleanupHook } from './hook';
export type { OciHook } from './hook';
export type { CleanupTarget } from './cleanup';
export { AnnotationError, PORTS_ANNOTATION, parsePortsAnnotation, declaredPortList } from './ports';
export type { DeclaredPorts } from './ports';
export { chainName, chainTag, HOST_LINK_IP, DPU_LINK_IP, LINK_TAP } from './rules';
