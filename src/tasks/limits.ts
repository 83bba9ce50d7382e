export { DEFAULT_LIMITS, type LifecycleLimits } from './lifecycle.js';
