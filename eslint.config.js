// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';
import { layerRules } from './layers.config.js';

export default tseslint.config(
  { ignores: ['dist/', 'src/gen/', 'node_modules/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: globals.node,
      parserOptions: { projectService: { allowDefaultProject: ['*.js', 'bin/*.js', 'examples/*.mjs'] }, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      eqeqeq: ['error', 'always'],
      // One private-member style: ECMAScript #private (enforced at run time, not only by tsc).
      // A private constructor stays `private constructor` (a factory-only class has no other way).
      'no-restricted-syntax': [
        'error',
        {
          selector: 'TSParameterProperty[accessibility]',
          message: 'Declare a #private field and assign it in the constructor instead of a parameter property.',
        },
        { selector: ':matches(PropertyDefinition, TSAbstractPropertyDefinition)[accessibility="private"]', message: 'Use a #private field, not `private`.' },
        { selector: 'MethodDefinition[accessibility="private"][kind!="constructor"]', message: 'Use a #private method, not `private`.' },
      ],
    },
  },
  ...layerRules(),
  {
    // vitest's asymmetric matchers (expect.stringMatching, expect.any…) are typed `any`.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-unsafe-assignment': 'off' },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
);
