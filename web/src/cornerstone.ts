// Cornerstone3D, set up once: the rendering core, the DICOM image loader reading medshard's
// WADO-RS with the user's bearer token, and the stack tools (window/level, pan, zoom, scroll).
import {
  Enums,
  RenderingEngine,
  cache,
  eventTarget,
  init as coreInit,
  type Types,
} from '@cornerstonejs/core';
import { init as loaderInit, wadors } from '@cornerstonejs/dicom-image-loader';
import {
  Enums as ToolEnums,
  PanTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as toolsInit,
  utilities as toolUtilities,
} from '@cornerstonejs/tools';
import { accessToken, refresh } from './api';
import type { Dataset } from './dicom';

let ready = false;

export function initCornerstone(): void {
  if (ready) return;
  coreInit();
  loaderInit({
    maxWebWorkers: Math.max(1, Math.min(4, Math.floor((navigator.hardwareConcurrency || 2) / 2))),
    beforeSend: () => ({ Authorization: `Bearer ${accessToken() ?? ''}` }),
    errorInterceptor: (error) => {
      if ((error as { request?: XMLHttpRequest }).request?.status === 401) void refresh();
    },
  });
  toolsInit();
  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) addTool(tool);
  ready = true;
}

export type PrimaryTool = 'WindowLevel' | 'Pan' | 'Zoom';

const TOOL_NAMES: Record<PrimaryTool, string> = {
  WindowLevel: WindowLevelTool.toolName,
  Pan: PanTool.toolName,
  Zoom: ZoomTool.toolName,
};

/** One stack viewport in an element, with its tool group; `destroy` frees both. */
export class StackViewer {
  readonly engine: RenderingEngine;
  readonly viewport: Types.IStackViewport;
  private readonly groupId: string;
  private primary: PrimaryTool = 'WindowLevel';
  private untrack: (() => void) | null = null;
  /** Called as the slices of the stack shown arrive in the image cache (or fail to). */
  onProgress: ((loaded: number, failed: number, total: number) => void) | null = null;

  constructor(readonly element: HTMLDivElement) {
    initCornerstone();
    const id = `medshard-${Math.random().toString(36).slice(2)}`;
    this.engine = new RenderingEngine(id);
    this.engine.enableElement({
      viewportId: 'stack',
      type: Enums.ViewportType.STACK,
      element,
      defaultOptions: { background: [0, 0, 0] as Types.Point3 },
    });
    this.viewport = this.engine.getViewport('stack') as Types.IStackViewport;
    this.groupId = `${id}-tools`;
    const group = ToolGroupManager.createToolGroup(this.groupId);
    if (!group) throw new Error('could not create the viewer tools');
    for (const name of Object.values(TOOL_NAMES)) group.addTool(name);
    group.addTool(StackScrollTool.toolName);
    group.addViewport('stack', id);
    this.bindTools();
  }

  private bindTools(): void {
    const group = ToolGroupManager.getToolGroup(this.groupId);
    if (!group) return;
    const { MouseBindings } = ToolEnums;
    const others = (Object.keys(TOOL_NAMES) as PrimaryTool[]).filter((t) => t !== this.primary);
    for (const t of others) group.setToolPassive(TOOL_NAMES[t]);
    group.setToolActive(TOOL_NAMES[this.primary], { bindings: [{ mouseButton: MouseBindings.Primary }] });
    // the other two stay on the middle and right buttons; two fingers zoom, wheel scrolls
    const [second, third] = others;
    group.setToolActive(TOOL_NAMES[second], {
      bindings: [{ mouseButton: second === 'Pan' ? MouseBindings.Auxiliary : MouseBindings.Secondary }],
    });
    group.setToolActive(TOOL_NAMES[third], {
      bindings: [
        { mouseButton: third === 'Pan' ? MouseBindings.Auxiliary : MouseBindings.Secondary },
        ...(third === 'Zoom' ? [{ numTouchPoints: 2 }] : []),
      ],
    });
    group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  }

  setPrimary(tool: PrimaryTool): void {
    this.primary = tool;
    this.bindTools();
  }

  /** Show a series: its instances' metadata (WADO-RS /metadata) become one image per frame. */
  async show(base: string, instances: Dataset[]): Promise<string[]> {
    const imageIds: string[] = [];
    for (const inst of instances) {
      const sop = inst['00080018']?.Value?.[0] as string;
      const frames = Number(inst['00280008']?.Value?.[0] ?? 1) || 1;
      for (let f = 1; f <= frames; f++) {
        const imageId = `wadors:${base}/instances/${sop}/frames/${f}`;
        wadors.metaDataManager.add(imageId, inst as unknown as Parameters<typeof wadors.metaDataManager.add>[1]);
        imageIds.push(imageId);
      }
    }
    this.track(imageIds);
    await this.viewport.setStack(imageIds, 0);
    this.viewport.render();
    // every slice is fetched in the background, nearest the slice shown first, so scrolling
    // through the stack never waits for the network
    toolUtilities.stackPrefetch.enable(this.element);
    return imageIds;
  }

  /** Count the stack's slices as the image cache gets them, for `onProgress`. */
  private track(imageIds: string[]): void {
    this.untrack?.();
    const wanted = new Set(imageIds);
    const loaded = new Set(imageIds.filter((id) => cache.isLoaded(id)));
    const failed = new Set<string>();
    const report = () => this.onProgress?.(loaded.size, failed.size, imageIds.length);
    const onLoaded = (e: Event) => {
      const id = (e as CustomEvent<{ image?: { imageId?: string } }>).detail.image?.imageId;
      if (!id || !wanted.has(id) || loaded.has(id)) return;
      loaded.add(id);
      failed.delete(id);
      report();
    };
    const onFailed = (e: Event) => {
      const id = (e as CustomEvent<{ imageId?: string }>).detail.imageId;
      if (!id || !wanted.has(id) || loaded.has(id) || failed.has(id)) return;
      failed.add(id);
      report();
    };
    eventTarget.addEventListener(Enums.Events.IMAGE_LOADED, onLoaded);
    eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_FAILED, onFailed);
    this.untrack = () => {
      eventTarget.removeEventListener(Enums.Events.IMAGE_LOADED, onLoaded);
      eventTarget.removeEventListener(Enums.Events.IMAGE_LOAD_FAILED, onFailed);
    };
    report();
  }

  resize(): void {
    this.engine.resize(true, false);
  }

  destroy(): void {
    this.untrack?.();
    try {
      toolUtilities.stackPrefetch.disable(this.element);
    } catch {
      /* no stack was ever shown */
    }
    ToolGroupManager.destroyToolGroup(this.groupId);
    this.engine.destroy();
    cache.purgeCache();
  }
}

export { Enums };
