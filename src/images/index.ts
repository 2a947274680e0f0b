// Images HeteroPod builds from files on this machine and imports into containerd.
// definitions: what each image holds · closure: ldd · rootfs: entries of a layer ·
// layer: the layer tar · archive: the OCI layout tar and its cache · import: ctr.
export {
  IMAGES,
  REPO_ROOT,
  REQUIRED_APPLETS,
  findImage,
  imageNames,
  ociArchitecture,
  selectImages,
} from './definitions';
export type { HostSource, ImageDefinition, ImageRunConfig, RootfsItem } from './definitions';
export { parseLddOutput, sharedLibraryClosure } from './closure';
export { collectLayerEntries, compareImagePaths } from './rootfs';
export type { LayerEntry } from './rootfs';
export {
  DEFAULT_ARCHIVE_DIR,
  MEDIA_TYPE_CONFIG,
  MEDIA_TYPE_LAYER,
  MEDIA_TYPE_MANIFEST,
  archivePath,
  buildImageArchive,
  ensureImageArchives,
} from './archive';
export type { BuiltImage, EnsuredImage } from './archive';
export { importImages } from './import';
export type { ImportOptions } from './import';
