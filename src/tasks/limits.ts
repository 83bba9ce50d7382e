export { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_TRAIL_PAGE } from './admin.js';
