/** A small typed event emitter (no dependency on Node's `events` or the DOM's EventTarget). */

export type Listener<A extends unknown[]> = (...args: A) => void;

/** Listeners of any event, as stored. */
type AnyListener = (...args: never[]) => void;

export class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  #listeners = new Map<keyof Events, Set<AnyListener>>();
  #onListenerError: (error: unknown) => void;

  constructor(onListenerError?: (error: unknown) => void) {
    this.#onListenerError =
      onListenerError ??
      ((error) => {
        // A throwing listener must not break the client's own state machine.
        setTimeout(() => {
          throw error;
        }, 0);
      });
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener as unknown as AnyListener);
    return () => this.off(event, listener);
  }

  /** Adds a listener called at most once. */
  once<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(event, ((...args: Events[K]) => {
      off();
      listener(...args);
    }) as Listener<Events[K]>);
    return off;
  }

  off<K extends keyof Events>(event: K, listener: Listener<Events[K]>): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    set.delete(listener as unknown as AnyListener);
    if (set.size === 0) this.#listeners.delete(event);
  }

  /** How many listeners an event has. */
  listenerCount<K extends keyof Events>(event: K): number {
    return this.#listeners.get(event)?.size ?? 0;
  }

  /** @internal */
  protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const l of [...set]) {
      try {
        (l as unknown as Listener<Events[K]>)(...args);
      } catch (error) {
        this.#onListenerError(error);
      }
    }
  }

  /** @internal */
  protected removeAllListeners(): void {
    this.#listeners.clear();
  }
}
